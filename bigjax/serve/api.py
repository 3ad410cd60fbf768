"""The HTTP API: OpenAI's routes over the engine (decoder runs) or the encoders (encoder runs).

    run = bigjax.load("runs/gpt_tiny", devices=jax.devices()[:1])
    app = create_app(run, ServeOptions(model_name="gpt_tiny"))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `python -m bigjax.serve` does

Routes: GET /health (the process answers), /ready (warmed up, and the engine decodes a token
within `ready_timeout`), /metrics (Prometheus), /v1/models; then by the run's task
  task=lm         POST /v1/completions, POST /v1/chat/completions (400 without a chat template)
  encoder runs    POST /v1/embeddings, /v1/classify, /v1/translate (bigjax/serve/encoders.py).

Every route but /health and /metrics needs the API key when one is set (`Authorization: Bearer
KEY`, compared in constant time, never read from the query string). A middleware checks it before
routing, so a route added later cannot forget it. Bodies over `max_body_bytes` get 413 before
they are parsed. Every error, raised here or by FastAPI, has OpenAI's shape.
"""

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import secrets
import time
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from bigjax import generate
from bigjax.config_checks import ConfigError
from bigjax.data import chat
from bigjax.load import LoadedRun
from bigjax.serve import engine as engine_lib
from bigjax.serve import protocol as p
from bigjax.serve.detokenize import TextStream
from bigjax.serve.encoders import ENDPOINTS, Encoders
from bigjax.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/metrics"})


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


class APIError(Exception):
  def __init__(self, status: int, message: str, param: str | None = None,
               code: str | None = None, type: str = "invalid_request_error",
               headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.param, self.code, self.type, self.headers = status, param, code, type, headers


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
  async def api_error(request, exc: APIError):
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

  app.add_exception_handler(APIError, api_error)
  app.add_exception_handler(ConfigError, config_error)
  app.add_exception_handler(HTTPException, http_error)
  app.add_exception_handler(RequestValidationError, invalid_request)
  app.add_exception_handler(Exception, unexpected)


@dataclasses.dataclass(eq=False)
class Choice:
  """One generated sequence of a request: what the engine runs and what the response shows."""

  index: int
  prompt_index: int
  prompt: str
  prompt_ids: np.ndarray
  request: engine_lib.Request
  text: TextStream
  tokens: list[engine_lib.Token] = dataclasses.field(default_factory=list)
  pieces: list[str] = dataclasses.field(default_factory=list)
  finish_reason: str | None = None
  echoed: bool = False  # the prompt has been shown (completions with echo)
  offset: int = 0  # characters shown so far (completions' logprobs.text_offset)


END = object()  # a merged stream's marker that one of its inputs has ended


async def merge(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
  """(i, item) from several async iterators as items come, (i, END) when stream i ends.
  Stopping early (or an error in one) cancels them all."""
  queue: asyncio.Queue = asyncio.Queue()

  async def pump(i, stream):
    try:
      async for item in stream:
        await queue.put((i, item, None))
      await queue.put((i, END, None))
    except Exception as e:  # handed to the reader, who raises it
      await queue.put((i, None, e))

  tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
  try:
    for _ in range(len(streams)):
      while True:
        i, item, error = await queue.get()
        if error is not None:
          raise error
        yield i, item
        if item is END:
          break
  finally:
    for task in tasks:
      task.cancel()


class Service:
  """The run, its engine or encoders, and the route handlers."""

  def __init__(self, run: LoadedRun, options: ServeOptions):
    self.run, self.options, self.tokenizer = run, options, run.tokenizer
    self.created = int(time.time())
    self.metrics = ServeMetrics(options.slots)
    self.engine, self.encoders = None, None
    if run.config.task == "lm":
      self.max_len = run.model.cfg.max_len
      self.engine = engine_lib.Engine(
          run.model, run.params, options.slots, options.max_waiting,
          options.buckets or engine_lib.default_buckets(self.max_len), self.metrics)
    elif run.config.task in ENDPOINTS:
      self.encoders = Encoders(run)
    else:
      raise ConfigError(f"task={run.config.task} runs have no endpoints; serve a language "
                        f"model (lm), an encoder ({', '.join(ENDPOINTS)[:-9]}) or seq2seq run")

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
      raise APIError(503, f"the engine has stopped: {worker.error}", type="server_error",
                     code="engine_stopped")
    if not worker.ready:
      raise APIError(503, "compiling and warming up", type="server_error", code="warming_up")
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
        raise APIError(503, f"the engine did not decode a token within "
                       f"{self.options.ready_timeout}s ({type(e).__name__})",
                       type="server_error", code="engine_slow") from None
    return {"status": "ready"}

  async def prometheus(self):
    return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

  async def models(self):
    return p.ModelList(data=[p.ModelCard(id=self.options.model_name, created=self.created)])

  def check_model(self, model: str | None) -> None:
    if model not in (None, self.options.model_name):
      raise APIError(404, f"model {model!r} is not served here; GET /v1/models lists "
                     f"{self.options.model_name!r}", param="model", code="model_not_found")

  # Decoder runs: turning requests into engine sequences, and their tokens into text.

  def encode_prompt(self, text: str, max_tokens: int | None, name: str) -> tuple[np.ndarray, int]:
    """(prompt ids, max_tokens), checked to fit the model; None takes all the room left."""
    ids = self.tokenizer.encode(text)
    if not len(ids):
      raise APIError(400, "the prompt encodes to no tokens", param="prompt")
    max_tokens = self.max_len - len(ids) if max_tokens is None else max_tokens
    try:
      generate.check_length(len(ids), max(max_tokens, 1), self.max_len, name)
    except ConfigError as e:
      raise APIError(400, str(e), param=name, code="context_length_exceeded") from None
    return ids, max_tokens

  def start(self, prompts: list[tuple[str, np.ndarray, int]], body: p.SamplingRequest,
            stop: list[str], top_logprobs: int = 0, score_prompt: bool = False) -> list[Choice]:
    """Queues body.n sequences per (text, ids, max_tokens) prompt; 503 when the queue is full."""
    stop_tokens = frozenset({self.tokenizer.eos_id})
    choices = []
    for i, (text, ids, max_tokens) in enumerate(prompts):
      for j in range(body.n):
        seed = secrets.randbelow(p.MAX_SEED) if body.seed is None else body.seed + j
        request = engine_lib.Request(ids, max_tokens, body.temperature, body.top_k, body.top_p,
                                     seed % (p.MAX_SEED + 1), stop_tokens, top_logprobs,
                                     score_prompt)
        choices.append(Choice(i * body.n + j, i, text, ids, request,
                              TextStream(self.tokenizer, ids, stop)))
    try:
      self.engine.submit([c.request for c in choices])
    except engine_lib.EngineUnavailable as e:
      headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
      raise APIError(503, str(e), type="server_error", headers=headers,
                     code="queue_full" if e.retry_after else "engine_stopped") from None
    return choices

  async def pieces(self, choice: Choice) -> AsyncIterator[tuple[str, list[engine_lib.Token]]]:
    """(text, the tokens behind it) as the choice's text becomes final; sets finish_reason."""
    pending = []
    events = self.engine.events(choice.request, self.options.request_timeout)
    async with contextlib.aclosing(events):
      async for token in events:
        choice.tokens.append(token)
        pending.append(token)
        text = choice.text.push(token.id)
        if text:
          yield text, pending
          pending = []
        if choice.text.stopped:
          break
    choice.finish_reason = "stop" if choice.text.stopped else choice.request.finish_reason
    tail = choice.text.finish()
    if tail or pending:
      yield tail, pending

  async def run_to_end(self, choices: list[Choice], http_request: Request) -> None:
    """Generates every choice's whole text; stops (and frees the slots) if the client leaves."""
    async def collect():
      async with contextlib.aclosing(merge([self.pieces(c) for c in choices])) as items:
        async for i, item in items:
          if item is not END:
            choices[i].pieces.append(item[0])

    task = asyncio.create_task(collect())
    try:
      while not (await asyncio.wait({task}, timeout=0.5))[0]:
        if await http_request.is_disconnected():
          task.cancel()
          raise APIError(499, "the client closed the connection")
      task.result()
    except (TimeoutError, engine_lib.EngineError) as e:
      raise self.failure(e) from None
    finally:
      task.cancel()

  def failure(self, e: Exception) -> APIError:
    """What a client hears when its sequences time out or the engine fails under them."""
    if isinstance(e, TimeoutError):
      return APIError(504, f"the request took longer than the server's request_timeout="
                      f"{self.options.request_timeout}s", type="server_error", code="timeout")
    return APIError(503, f"the engine failed: {e}", type="server_error", code="engine_stopped")

  def stream(self, choices: list[Choice], head, chunk, tail, usage) -> EventSourceResponse:
    """Server-sent events: head(choice) first (if given), chunk(choice, text, tokens) as text
    becomes final, tail(choice) when a choice ends, usage() (or nothing), then [DONE]."""
    async def events():
      try:
        for c in choices if head else ():
          yield head(c).model_dump_json()
        async with contextlib.aclosing(merge([self.pieces(c) for c in choices])) as items:
          async for i, item in items:
            out = tail(choices[i]) if item is END else chunk(choices[i], *item)
            yield out.model_dump_json()
        if (last := usage()) is not None:
          yield last.model_dump_json()
      except (TimeoutError, engine_lib.EngineError) as e:
        error = self.failure(e)
        yield json.dumps(p.error(str(error), error.type, code=error.code))
      yield "[DONE]"

    return EventSourceResponse(events(), sep="\n")

  def usage(self, choices: list[Choice]) -> p.Usage:
    prompt = sum(len(ids) for ids in {c.prompt_index: c.prompt_ids for c in choices}.values())
    completion = sum(c.request.generated for c in choices)
    return p.Usage(prompt_tokens=prompt, completion_tokens=completion,
                   total_tokens=prompt + completion)

  async def completions(self, body: p.CompletionRequest, request: Request):
    self.check_model(body.model)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    prompts = [(t, *self.encode_prompt(t, body.max_tokens, "max_tokens")) for t in texts]
    choices = self.start(prompts, body, self.stop_strings(body), body.logprobs or 0,
                         score_prompt=body.echo and body.logprobs is not None)
    ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())

    def response(choice_list, usage=None):
      return p.Completion(id=ident, created=created, model=self.options.model_name,
                          choices=choice_list, usage=usage)

    if body.stream:
      with_usage = body.stream_options is not None and body.stream_options.include_usage
      return self.stream(
          choices, head=None,
          chunk=lambda c, text, tokens: response([self.completion_choice(c, text, tokens, body)]),
          tail=lambda c: response([self.completion_choice(c, "", [], body, c.finish_reason)]),
          usage=lambda: response([], self.usage(choices)) if with_usage else None)
    await self.run_to_end(choices, request)
    return response([self.completion_choice(c, "".join(c.pieces), c.tokens, body,
                                            c.finish_reason) for c in choices],
                    self.usage(choices))

  def stop_strings(self, body: p.SamplingRequest) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])

  def completion_choice(self, c: Choice, text: str, tokens, body: p.CompletionRequest,
                        finish_reason=None) -> p.CompletionChoice:
    """The choice's next text (after the prompt, the first time, with echo) and its logprobs."""
    echo, c.echoed = body.echo and not c.echoed, c.echoed or body.echo
    entries = [(t.id, t.logprob, t.top) for t in tokens]
    if echo:
      text = c.prompt + text
      scored = [(t.id, t.logprob, t.top) for t in c.request.prompt_scores or ()]
      entries = [(int(c.prompt_ids[0]), None, None)] + scored + entries
    logprobs = None
    if body.logprobs is not None:
      strings = [self.tokenizer.decode([i]) for i, _, _ in entries]
      offsets = c.offset + np.cumsum([0] + [len(s) for s in strings])
      c.offset = int(offsets[-1])
      logprobs = p.CompletionLogprobs(
          tokens=strings, token_logprobs=[lp for _, lp, _ in entries],
          top_logprobs=[None if top is None else
                        {self.tokenizer.decode([i]): lp for i, lp in top[:body.logprobs]}
                        for _, _, top in entries],
          text_offset=[int(o) for o in offsets[:-1]])
    return p.CompletionChoice(index=c.index, text=text, logprobs=logprobs,
                              finish_reason=finish_reason)

  async def chat_completions(self, body: p.ChatRequest, request: Request):
    self.check_model(body.model)
    template = self.run.config.data.chat_template
    if not template:
      raise APIError(400, "this run has no chat template (its data.chat_template is empty); "
                     "use /v1/completions", param="messages", code="no_chat_template")
    if body.max_tokens is not None and body.max_completion_tokens is not None:
      raise APIError(400, "set max_completion_tokens or max_tokens, not both",
                     param="max_tokens")
    if body.top_logprobs is not None and not body.logprobs:
      raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    text = chat.render_text([m.model_dump() for m in body.messages], template,
                            add_generation_prompt=True)
    ids, max_tokens = self.encode_prompt(text, body.max_completion_tokens or body.max_tokens,
                                         "max_tokens")
    stop = self.stop_strings(body) + ([chat.PLAIN_END] if template == "plain" else [])
    choices = self.start([(text, ids, max_tokens)], body, stop, body.top_logprobs or 0)
    ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    logprobs = lambda tokens: self.chat_logprobs(tokens, body.top_logprobs or 0) \
        if body.logprobs else None

    def chunk(c, delta, tokens=(), finish_reason=None, usage=None):
      choice = [p.ChatChunkChoice(index=c.index, delta=delta, logprobs=logprobs(tokens),
                                  finish_reason=finish_reason)] if c else []
      return p.ChatCompletionChunk(id=ident, created=created, model=self.options.model_name,
                                   choices=choice, usage=usage)

    if body.stream:
      with_usage = body.stream_options is not None and body.stream_options.include_usage
      return self.stream(
          choices, head=lambda c: chunk(c, p.ChatMessageOut(role="assistant", content="")),
          chunk=lambda c, text, tokens: chunk(c, p.ChatMessageOut(content=text), tokens),
          tail=lambda c: chunk(c, p.ChatMessageOut(), finish_reason=c.finish_reason),
          usage=lambda: chunk(None, None, usage=self.usage(choices)) if with_usage else None)
    await self.run_to_end(choices, request)
    return p.ChatCompletion(
        id=ident, created=created, model=self.options.model_name, usage=self.usage(choices),
        choices=[p.ChatChoice(index=c.index, logprobs=logprobs(c.tokens),
                              message=p.ChatMessageOut(role="assistant", content="".join(c.pieces)),
                              finish_reason=c.finish_reason) for c in choices])

  def chat_logprobs(self, tokens, top: int) -> p.ChatLogprobs:
    def entry(token_id, logprob):
      text = self.tokenizer.decode([token_id])
      return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
    return p.ChatLogprobs(content=[
        p.TokenLogprob(**entry(t.id, t.logprob),
                       top_logprobs=[p.TopLogprob(**entry(i, lp)) for i, lp in t.top[:top]])
        for t in tokens])

  # Encoder runs.

  async def encoder_answer(self, endpoint: str, body: p.EncoderRequest):
    self.check_model(body.model)
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
      return routes + [("POST", "/v1/completions", self.completions),
                       ("POST", "/v1/chat/completions", self.chat_completions)]
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
