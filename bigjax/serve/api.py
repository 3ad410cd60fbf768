"""The HTTP API: OpenAI's routes over the engine (decoder runs) or the encoders (encoder runs).

    run = bigjax.load("runs/gpt_tiny", devices=jax.devices()[:1])
    app = create_app(run, ServeOptions(model_name="gpt_tiny"))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `python -m bigjax.serve` does

Routes: GET /health (the process answers), /ready (warmed up, and the engine decodes a token
within `ready_timeout`), /metrics (Prometheus), /v1/models; then by the run's task
  task=lm         POST /v1/completions, /v1/chat/completions (bigjax/serve/completions.py)
  encoder runs    POST /v1/embeddings, /v1/classify, /v1/translate (bigjax/serve/encoders.py).

Every route but the probes' (/health, /ready, /metrics) needs the API key when one is set
(`Authorization: Bearer KEY`, compared in constant time, never read from the query string). A
middleware checks it before routing, so a route added later cannot forget it. Bodies over
`max_body_bytes` get 413 before they are parsed. Every error, raised here or by FastAPI, has OpenAI's shape.
"""

import contextlib
import dataclasses
import hmac
import logging
import time

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from bigjax.config_checks import ConfigError
from bigjax.load import LoadedRun
from bigjax.serve import engine as engine_lib
from bigjax.serve import protocol as p
from bigjax.serve.completions import Completions
from bigjax.serve.encoders import ENDPOINTS, Encoders
from bigjax.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

# Probes (a load balancer's, Kubernetes') send no key.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  model_name: str  # what GET /v1/models lists and requests may name
  api_key: str = ""  # "" = no key needed
  slots: int = 8  # sequences decoded together
  max_waiting: int = 64  # sequences queued for a slot before requests get 503
  buckets: tuple[int, ...] = ()  # prefill lengths compiled at startup (() = powers of 2)
  max_body_bytes: int = 1 << 20
  request_timeout: float = 600.0  # seconds from submission to the last token
  ready_timeout: float = 10.0  # seconds /ready waits for its one-token decode


def error_response(status: int, message: str, param=None, code=None,
                   type="invalid_request_error", headers=None) -> JSONResponse:
  return JSONResponse(p.error(message, type, param, code), status_code=status, headers=headers)


# Middleware: plain ASGI, so streamed responses pass through untouched.


class ApiKeyMiddleware:
  def __init__(self, app, api_key: str):
    self.app, self.expected = app, f"Bearer {api_key}".encode()

  async def __call__(self, scope, receive, send):
    if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
      given = dict(scope["headers"]).get(b"authorization", b"")
      if not hmac.compare_digest(given, self.expected):
        response = error_response(401, "a valid API key is required: send the header "
                                  "'Authorization: Bearer KEY'", code="invalid_api_key")
        return await response(scope, receive, send)
    await self.app(scope, receive, send)


class BodyLimitMiddleware:
  """Reads the whole body (at most `max_bytes`) before the app sees it; 413 beyond."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    too_large = error_response(413, f"the request body is larger than {self.max_bytes} bytes",
                               code="body_too_large")
    declared = dict(scope["headers"]).get(b"content-length", b"0")
    if declared.isdigit() and int(declared) > self.max_bytes:
      return await too_large(scope, receive, send)
    chunks, size, more = [], 0, True
    while more:
      message = await receive()
      if message["type"] == "http.disconnect":
        return
      chunks.append(message.get("body", b""))
      size, more = size + len(chunks[-1]), message.get("more_body", False)
      if size > self.max_bytes:
        return await too_large(scope, receive, send)
    body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replay():  # the body once, then the client's own messages (disconnects)
      return body.pop() if body else await receive()

    await self.app(scope, replay, send)


UNION_TAGS = ("str", "int", "float", "bool", "list", "dict")


def validation_error(exc: RequestValidationError) -> JSONResponse:
  """The most telling problem, naming the field: unknown fields, wrong types, bad values, bad
  JSON. Of a union's alternatives (prompt: a string or a list of strings) it reports the one
  the value came closest to: a bad value over a wrong type, then the deepest."""
  errors = sorted(exc.errors(), key=lambda e: (e["type"].endswith("_type"), -len(e["loc"])))
  first = errors[0]
  if first["type"] == "json_invalid":
    return error_response(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error')}",
                          code="invalid_json")
  # Union alternatives show up in loc by their type ("list[constrained-str]"): not fields.
  loc = [str(part) for part in first["loc"][1:]
         if not (isinstance(part, str) and ("[" in part or "-" in part or part in UNION_TAGS))]
  if not loc:
    return error_response(400, "the body must be a JSON object, sent with Content-Type: "
                          "application/json", code="invalid_body")
  field = ".".join(loc)
  if first["type"] == "extra_forbidden":
    message = f"{field} is not supported by this server"
  elif first["type"] == "missing":
    message = f"{field} is required"
  else:
    message = f"{field}: {first['msg']}"
  return error_response(400, message, param=loc[0], code=first["type"])


def install_error_handlers(app: FastAPI) -> None:
  async def api_error(request, exc: p.APIError):
    return error_response(exc.status, str(exc), exc.param, exc.code, exc.type, exc.headers)

  async def config_error(request, exc: ConfigError):  # a one-line error about the request
    return error_response(400, str(exc))

  async def http_error(request, exc: HTTPException):  # 404 route, 405 method, unparsable body
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

  async def invalid_request(request, exc: RequestValidationError):
    return validation_error(exc)

  async def unexpected(request, exc: Exception):
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")

  app.add_exception_handler(p.APIError, api_error)
  app.add_exception_handler(ConfigError, config_error)
  app.add_exception_handler(HTTPException, http_error)
  app.add_exception_handler(RequestValidationError, invalid_request)
  app.add_exception_handler(Exception, unexpected)


class Service:
  """The run, its engine (and completions) or its encoders, and the routes every run has."""

  def __init__(self, run: LoadedRun, options: ServeOptions):
    self.run, self.options, self.tokenizer = run, options, run.tokenizer
    self.created = int(time.time())
    self.metrics = ServeMetrics(options.slots)
    self.engine, self.encoders = None, None
    if run.config.task == "lm":
      self.engine = engine_lib.Engine(
          run.model, run.params, options.slots, options.max_waiting,
          options.buckets or engine_lib.default_buckets(run.model.cfg.max_len), self.metrics)
      self.completions = Completions(run, self.engine, options)
    elif run.config.task in ENDPOINTS:
      self.encoders = Encoders(run)
    else:
      raise ConfigError(f"task={run.config.task} runs have no endpoints; serve a language "
                        f"model (lm), an encoder (mlm, text_classify) or a seq2seq run")

  @contextlib.asynccontextmanager
  async def lifespan(self, app):
    (self.engine or self.encoders).start()  # compiles on its own thread: /health answers now
    try:
      yield
    finally:
      if self.engine is not None:
        self.engine.stop()

  # Routes every run has.

  async def health(self):
    return {"status": "ok"}

  async def ready(self):
    worker = self.engine or self.encoders
    if worker.error is not None:
      raise p.APIError(503, f"the engine has stopped: {worker.error}", type="server_error",
                     code="engine_stopped")
    if not worker.ready:
      raise p.APIError(503, "compiling and warming up", type="server_error", code="warming_up")
    if self.engine is not None:
      probe = engine_lib.Request(np.zeros(1, np.int32), max_tokens=1, temperature=0.0,
                                 probe=True)
      self.engine.submit([probe], bypass_queue_limit=True)
      try:
        events = self.engine.events(probe, self.options.ready_timeout)
        async with contextlib.aclosing(events):
          async for _ in events:
            pass
      except (TimeoutError, engine_lib.EngineError) as e:
        raise p.APIError(503, f"the engine did not decode a token within "
                       f"{self.options.ready_timeout}s ({type(e).__name__})",
                       type="server_error", code="engine_slow") from None
    return {"status": "ready"}

  async def prometheus(self):
    return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

  async def models(self):
    return p.ModelList(data=[p.ModelCard(id=self.options.model_name, created=self.created)])

  # Encoder runs.

  async def encoder_answer(self, endpoint: str, body: p.EncoderRequest):
    p.check_model(body.model, self.options.model_name)
    texts = [body.input] if isinstance(body.input, str) else body.input
    results, tokens = await self.encoders.answer(endpoint, texts)
    return p.EncoderResponse(
        data=[p.EncoderResult(index=i, **r) for i, r in enumerate(results)],
        model=self.options.model_name, usage=p.Usage(prompt_tokens=tokens, total_tokens=tokens),
    ).model_dump(exclude_none=True)

  async def embeddings(self, body: p.EmbeddingRequest):
    return await self.encoder_answer("embeddings", body)

  async def classify(self, body: p.EncoderRequest):
    return await self.encoder_answer("classify", body)

  async def translate(self, body: p.EncoderRequest):
    return await self.encoder_answer("translate", body)

  def routes(self) -> list[tuple[str, str, object]]:
    """(method, path, handler) for this run's task."""
    routes = [("GET", "/health", self.health), ("GET", "/ready", self.ready),
              ("GET", "/metrics", self.prometheus), ("GET", "/v1/models", self.models)]
    if self.engine is not None:
      return routes + [("POST", "/v1/completions", self.completions.completions),
                       ("POST", "/v1/chat/completions", self.completions.chat_completions)]
    return routes + [("POST", f"/v1/{name}", getattr(self, name))
                     for name in self.encoders.endpoints]


def create_app(run: LoadedRun, options: ServeOptions) -> FastAPI:
  """The server for `run` (see the module docstring); its engine starts with the app."""
  service = Service(run, options)
  app = FastAPI(title=f"bigjax: {options.model_name}", lifespan=service.lifespan)
  app.state.service = service
  install_error_handlers(app)
  for method, path, handler in service.routes():
    app.add_api_route(path, handler, methods=[method])
  app.add_middleware(BodyLimitMiddleware, max_bytes=options.max_body_bytes)
  if options.api_key:  # added last, so it runs first: no body is read without the key
    app.add_middleware(ApiKeyMiddleware, api_key=options.api_key)
  return app
