"""bigjax.serve against a live server on a free loopback port, through the official `openai`
client and httpx over real sockets: completions, streaming, chat, batch invariance, the API key
on every route, malformed requests, disconnects, a full queue, and a dead engine."""

import asyncio
import contextlib
import dataclasses
import threading
import time

import httpx
import jax
import numpy as np
import openai
import portpicker
import pytest
import uvicorn

import bigjax
from bigjax import generate
from bigjax.data import chat
from bigjax.load import LoadedRun
from bigjax.serve import api

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclasses.dataclass
class Live:
  url: str
  app: object
  run: LoadedRun

  @property
  def service(self) -> api.Service:
    return self.app.state.service

  def client(self) -> openai.OpenAI:
    return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=120)

  def metric(self, name: str, default: float | None = None) -> float:
    """A sample's value from GET /metrics (no key needed there)."""
    for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
      if line.startswith(name + " "):
        return float(line.split()[-1])
    if default is None:
      raise KeyError(name)
    return default


@contextlib.contextmanager
def serving(workdir: str, **options):
  """The run in `workdir` served by uvicorn on a free 127.0.0.1 port, ready when this yields."""
  run = bigjax.load(workdir, devices=jax.devices()[:1])
  app = api.create_app(run, api.ServeOptions(model_name="tiny", api_key=KEY, **options))
  port = portpicker.pick_unused_port()
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  live = Live(f"http://127.0.0.1:{port}", app, run)
  try:
    deadline = time.monotonic() + 300  # compiling on a busy 2-core machine
    while True:
      try:
        ready = httpx.get(live.url + "/ready", headers=AUTH, timeout=60)
        if ready.status_code == 200:
          break
        assert ready.json()["error"]["code"] == "warming_up", ready.text
      except httpx.TransportError:
        pass  # not listening yet
      assert time.monotonic() < deadline, "the server did not get ready"
      time.sleep(0.1)
    yield live
  finally:
    server.should_exit = True
    thread.join(timeout=60)


@pytest.fixture(scope="module")
def live(lm_run):
  # 4 slots, 12 queue places and a 4 kB body limit, so tests can go past each; max_len is 64.
  with serving(lm_run, slots=4, max_waiting=12, buckets=(16, 32), max_body_bytes=4096,
               request_timeout=120) as live:
    yield live


@contextlib.contextmanager
def slow_engine(live: Live, seconds_per_step: float = 0.05):
  """Every decode step takes at least this long, so a request is still running when a test
  acts on it (a tiny model on a CPU finishes 64 tokens in milliseconds)."""
  engine = live.service.engine
  decode = engine._decode_program

  def slow(*args):
    time.sleep(seconds_per_step)
    return decode(*args)

  engine._decode_program = slow
  try:
    yield
  finally:
    engine._decode_program = decode


def wait_until(condition, seconds: float = 30.0) -> None:
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, "timed out waiting"
    time.sleep(0.05)


def test_openai_client_completions_streaming_chat_and_models(live):
  client = live.client()
  assert [m.id for m in client.models.list()] == ["tiny"]

  whole = client.completions.create(model="tiny", prompt="def f(", max_tokens=12, temperature=0)
  assert whole.choices[0].finish_reason == "length"
  assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (6, 12)
  chunks = list(client.completions.create(model="tiny", prompt="def f(", max_tokens=12,
                                          temperature=0, stream=True))
  assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
  assert chunks[-1].choices[0].finish_reason == "length"

  # Several prompts, several choices each, the prompt echoed with its log-probs.
  many = client.completions.create(model="tiny", prompt=["ab", "xyz"], n=2, max_tokens=3,
                                   temperature=0, echo=True, logprobs=2)
  assert [c.index for c in many.choices] == [0, 1, 2, 3]
  for c, prompt in zip(many.choices, ["ab", "ab", "xyz", "xyz"]):
    assert c.text.startswith(prompt) and c.logprobs.token_logprobs[0] is None
    assert len(c.logprobs.tokens) == len(prompt) + 3
    assert all(len(top) <= 2 for top in c.logprobs.top_logprobs[1:])
  assert many.choices[0].text == many.choices[1].text  # greedy: n copies of one answer

  messages = [{"role": "user", "content": "What is 2+3?"}]
  answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                          temperature=0)
  # Chat is completion of the rendered conversation, stopped at the template's end of turn.
  rendered = chat.render_text(messages, "plain", add_generation_prompt=True)
  same = client.completions.create(model="tiny", prompt=rendered, max_tokens=10, temperature=0,
                                   stop=[chat.PLAIN_END])
  assert answer.choices[0].message.content == same.choices[0].text
  streamed = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                                 temperature=0, stream=True))
  assert streamed[0].choices[0].delta.role == "assistant"
  assert "".join(c.choices[0].delta.content or "" for c in streamed) == \
      answer.choices[0].message.content


def test_server_tokens_equal_bigjax_generate(live):
  run, client = live.run, live.client()
  for prompt in ["def f(", "import os\n"]:
    for settings in [dict(temperature=0.0), dict(temperature=0.9, top_k=20, top_p=0.9, seed=7)]:
      served = client.completions.create(
          model="tiny", prompt=prompt, max_tokens=16, temperature=settings["temperature"],
          top_p=settings.get("top_p", 1.0), seed=settings.get("seed"),
          extra_body={"top_k": settings.get("top_k", 0)}).choices[0].text
      new = generate.generate(run.model, run.params, [run.tokenizer.encode(prompt)], 16,
                              stop_tokens=[run.tokenizer.eos_id], **settings)[0]
      assert served == run.tokenizer.decode(new)


def test_concurrent_requests_of_different_lengths_match_their_answers_alone(live):
  """8 concurrent requests on 4 slots (so some wait), greedy and seeded, of 1 to 8 bytes."""
  prompts = ["a", "bc", "def", "ghij", "klmno", "pqrstu", "vwxyz01", "23456789"]
  settings = [dict(temperature=0.0) if i % 2 else dict(temperature=1.0, seed=i, top_p=0.95)
              for i in range(len(prompts))]
  alone = [live.client().completions.create(model="tiny", prompt=p, max_tokens=20, **s)
           .choices[0].text for p, s in zip(prompts, settings)]

  async def together():
    client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0,
                                timeout=120)
    answers = await asyncio.gather(*[
        client.completions.create(model="tiny", prompt=p, max_tokens=20, **s)
        for p, s in zip(prompts, settings)])
    return [a.choices[0].text for a in answers]

  assert asyncio.run(together()) == alone
  assert len(set(alone)) > 4  # the prompts lead to different answers


def test_every_route_but_health_and_metrics_needs_the_key(live):
  routes = [(method, route.path) for route in live.app.routes
            for method in route.methods - {"HEAD"}]
  assert {("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/ready"),
          ("GET", "/v1/models"), ("GET", "/openapi.json")} <= set(routes)
  routes.append(("GET", "/no/such/route"))
  for method, path in routes:
    for headers in [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY},
                    {"X-Api-Key": KEY}]:
      # A key in the query string is never read.
      response = httpx.request(method, live.url + path, headers=headers,
                               params={"api_key": KEY}, timeout=30)
      if path in api.PUBLIC_PATHS:
        assert response.status_code == 200, (method, path)
      else:
        assert response.status_code == 401, (method, path, headers)
        assert response.json()["error"]["code"] == "invalid_api_key"
  assert httpx.get(live.url + "/v1/models", headers=AUTH, timeout=30).status_code == 200


JSON = {"Content-Type": "application/json"}
GOOD = {"model": "tiny", "prompt": "def ", "max_tokens": 4}
MALFORMED = [  # (what, path, request, status, param)
    ("bad JSON", "/v1/completions", dict(content=b'{"prompt": ', headers=JSON), 400, None),
    ("invalid UTF-8", "/v1/completions", dict(content=b'{"prompt": "\xff\xfe"}', headers=JSON),
     400, None),
    ("not an object", "/v1/completions", dict(json=["def "]), 400, None),
    ("no body", "/v1/completions", dict(), 400, None),
    ("wrong type", "/v1/completions", dict(json={**GOOD, "max_tokens": "4"}), 400, "max_tokens"),
    ("prompt not text", "/v1/completions", dict(json={**GOOD, "prompt": 5}), 400, "prompt"),
    ("negative max_tokens", "/v1/completions", dict(json={**GOOD, "max_tokens": -1}), 400,
     "max_tokens"),
    ("huge max_tokens", "/v1/completions", dict(json={**GOOD, "max_tokens": 10**9}), 400,
     "max_tokens"),
    ("empty prompt list", "/v1/completions", dict(json={**GOOD, "prompt": []}), 400, "prompt"),
    ("empty prompt", "/v1/completions", dict(json={**GOOD, "prompt": ""}), 400, "prompt"),
    ("unknown field", "/v1/completions", dict(json={**GOOD, "best_of": 2}), 400, "best_of"),
    ("oversized body", "/v1/completions", dict(json={**GOOD, "prompt": "x" * 5000}), 413, None),
    ("prompt too long", "/v1/completions", dict(json={**GOOD, "prompt": "x" * 60,
                                                      "max_tokens": 10}), 400, "max_tokens"),
    ("temperature < 0", "/v1/completions", dict(json={**GOOD, "temperature": -0.5}), 400,
     "temperature"),
    ("top_p > 1", "/v1/completions", dict(json={**GOOD, "top_p": 1.5}), 400, "top_p"),
    ("n too large", "/v1/completions", dict(json={**GOOD, "n": 17}), 400, "n"),
    ("stop list too long", "/v1/completions", dict(json={**GOOD, "stop": list("abcde")}), 400,
     "stop"),
    ("too many logprobs", "/v1/completions", dict(json={**GOOD, "logprobs": 6}), 400,
     "logprobs"),
    ("negative seed", "/v1/completions", dict(json={**GOOD, "seed": -1}), 400, "seed"),
    ("another model", "/v1/completions", dict(json={**GOOD, "model": "gpt-4"}), 404, "model"),
    ("unknown role", "/v1/chat/completions",
     dict(json={"messages": [{"role": "robot", "content": "hi"}]}), 400, "messages"),
    ("no messages", "/v1/chat/completions", dict(json={"messages": []}), 400, "messages"),
    ("top_logprobs alone", "/v1/chat/completions",
     dict(json={"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}), 400,
     "top_logprobs"),
    ("unknown route", "/v1/nothing", dict(json=GOOD), 404, None),
]


@pytest.mark.parametrize("what, path, request_, status, param", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_openai_shaped_errors(live, what, path, request_, status, param):
  response = httpx.post(live.url + path, headers={**AUTH, **request_.pop("headers", {})},
                        timeout=30, **request_)
  assert response.status_code == status, response.text
  error = response.json()["error"]
  assert set(error) == {"message", "type", "param", "code"} and error["message"]
  assert error["param"] == param
  if what == "huge max_tokens":  # the numbers, so the client knows what fits
    assert "4 tokens plus max_tokens=1000000000" in error["message"]
    assert "max_len=64" in error["message"]


def test_a_good_request_after_the_malformed_ones(live):
  response = httpx.post(live.url + "/v1/completions", headers=AUTH, json=GOOD, timeout=60)
  assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4


def test_health_and_metrics_without_the_key_ready_with_it(live):
  assert httpx.get(live.url + "/health", timeout=30).json() == {"status": "ok"}
  text = httpx.get(live.url + "/metrics", timeout=30).text
  for name in ("bigjax_requests_running", "bigjax_requests_waiting", "bigjax_slot_use_ratio",
               "bigjax_time_to_first_token_seconds_bucket",
               "bigjax_time_per_output_token_seconds_bucket",
               "bigjax_request_latency_seconds_bucket", "bigjax_generated_tokens_total"):
    assert name in text
  assert httpx.get(live.url + "/ready", headers=AUTH, timeout=30).status_code == 200


def first_event(lines) -> str:
  """The first `data:` line. (A generator expression would do, but when it is collected it
  closes the line iterator, and with it the connection.)"""
  for line in lines:
    if line.startswith("data:"):
      return line
  raise AssertionError("the stream ended without an event")


def test_a_client_that_disconnects_mid_stream_frees_its_slot(live):
  cancelled = 'bigjax_sequences_finished_total{reason="cancelled"}'
  before = live.metric(cancelled, default=0.0)
  # 50 steps of 0.3 s: the request cannot finish before a busy machine notices the disconnect.
  with slow_engine(live, seconds_per_step=0.3):
    # Greedy, so that no end-of-text byte can end it early.
    request = {**GOOD, "max_tokens": 50, "temperature": 0, "stream": True}
    with httpx.stream("POST", live.url + "/v1/completions", headers=AUTH, timeout=60,
                      json=request) as response:
      lines = response.iter_lines()
      first_event(lines)
      assert live.metric("bigjax_requests_running") == 1
    # Freed by the disconnect, not by finishing: the engine counts it cancelled (a moment after
    # the request stops running, on the engine's thread).
    wait_until(lambda: live.metric("bigjax_requests_running") == 0
               and live.metric(cancelled, default=0.0) == before + 1, seconds=60)


def test_a_full_queue_answers_503_with_retry_after(live):
  with slow_engine(live):
    request = {**GOOD, "max_tokens": 50, "n": 12, "temperature": 0, "stream": True}
    with httpx.stream("POST", live.url + "/v1/completions", headers=AUTH, timeout=60,
                      json=request) as response:
      lines = response.iter_lines()
      first_event(lines)
      # 4 run and 8 wait: 12 more cannot queue, though they could on an empty queue.
      assert live.metric("bigjax_requests_waiting") == 8
      full = httpx.post(live.url + "/v1/completions", headers=AUTH, timeout=30,
                        json={**GOOD, "n": 12})
      assert full.status_code == 503 and full.headers["Retry-After"] == "1"
      assert full.json()["error"]["code"] == "queue_full"
    wait_until(lambda: live.metric("bigjax_requests_running") == 0
               and live.metric("bigjax_requests_waiting") == 0)


def test_a_request_past_its_timeout_gets_504_and_frees_its_slot(live):
  completions = live.service.completions
  options = completions.options
  completions.options = dataclasses.replace(options, request_timeout=0.5)
  try:
    with slow_engine(live):  # 50 tokens take 2.5 s at least
      late = httpx.post(live.url + "/v1/completions", headers=AUTH, timeout=60,
                        json={**GOOD, "max_tokens": 50, "temperature": 0})
      assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
      wait_until(lambda: live.metric("bigjax_requests_running") == 0)
  finally:
    completions.options = options


def test_zz_a_dead_engine_makes_ready_503(live):
  """Last in this module: it breaks the shared server's engine."""
  def fail(*args):
    raise RuntimeError("device lost")

  # Prefill too: a sampled first token may end the request before any decode step.
  engine = live.service.engine
  engine._decode_program = fail
  engine._prefill_programs = {bucket: fail for bucket in engine._prefill_programs}
  response = httpx.post(live.url + "/v1/completions", headers=AUTH, json=GOOD, timeout=60)
  assert response.status_code == 503 and "device lost" in response.json()["error"]["message"]
  ready = httpx.get(live.url + "/ready", headers=AUTH, timeout=30)
  assert ready.status_code == 503 and ready.json()["error"]["code"] == "engine_stopped"
  assert httpx.get(live.url + "/health", timeout=30).status_code == 200
  np.testing.assert_equal(live.metric("bigjax_requests_running"), 0)
