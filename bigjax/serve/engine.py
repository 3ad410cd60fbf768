"""Continuous batching: a fixed number of decode slots over one static-shape KV cache.

A request (one sequence) waits in a queue until a slot is free. Admitting it runs one prefill
program, compiled for the smallest prompt-length bucket that holds the prompt, which writes the
prompt's keys and values into the slot's rows of the shared cache and draws the first token. Each
engine step then runs one decode program over every slot at once: a slot feeds its last token at
its own position (a per-row cache index), so sequences of any length and age share the step. A
sequence that ends (a stop token, max_tokens, or a client that went away) frees its slot at once,
and the next waiting request is prefilled into it while the other slots keep decoding.

A request's tokens do not depend on its neighbours: its prefill sees its prompt alone, the decode
program has one fixed shape and computes each row on its own, and a row's draws are keyed by its
own seed and token count. Prefill, decode and sampling are bigjax.generate's, so the engine
answers what `bigjax.generate.generate` answers.

The engine runs on its own thread. Asyncio code submits requests and reads their tokens with
`events`; tokens reach each event loop once per engine step, in one batch. Every program is
compiled at startup, then one request is decoded, before `ready` is set.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, AsyncIterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import generate
from bigjax.config_checks import ConfigError
from bigjax.models import gpt
from bigjax.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # most likely alternatives returned per token (OpenAI's chat maximum)
SMALLEST_BUCKET = 16  # prompt-length buckets: powers of two from this up to max_len, and max_len


@dataclasses.dataclass(frozen=True)
class Token:
  id: int
  logprob: float  # log-probability under the model (before temperature, top-k and top-p)
  top: tuple[tuple[int, float], ...]  # the most likely (id, log-prob) at this position


@dataclasses.dataclass(frozen=True)
class Finished:
  reason: str  # "stop" (a stop token), "length" (max_tokens), "cancelled" or "error"
  error: str = ""


class EngineUnavailable(Exception):
  """The queue is full (`retry_after` seconds) or the engine loop has stopped (None)."""

  def __init__(self, message: str, retry_after: int | None = None):
    super().__init__(message)
    self.retry_after = retry_after


class EngineError(Exception):
  """The engine loop failed while the request was queued or running."""


@dataclasses.dataclass(eq=False)
class Request:
  """One sequence to generate. The engine fills the fields below the line."""

  prompt: np.ndarray  # token ids
  max_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop_tokens: frozenset[int] = frozenset()
  top_logprobs: int = 0  # most likely alternatives returned with each token (<= 20)
  prompt_logprobs: bool = False  # also score the prompt's tokens (echo with logprobs)
  probe: bool = False  # a readiness check or the warm-up: left out of the metrics
  # ---
  prompt_scores: list[Token] | None = None  # prompt tokens 1.. (set before the first token)
  finish_reason: str | None = None
  cancelled: bool = False
  submitted: float = 0.0
  first_token_at: float = 0.0
  generated: int = 0
  _loop: Any = None
  _queue: Any = None


class Slots(NamedTuple):
  """Device state of every slot: the shared cache and each row's next input."""

  cache: Any  # gpt.init_cache(cfg, slots, max_len)
  token_B: jax.Array  # the last token drawn, fed at the next step
  index_B: jax.Array  # its position (where its keys are written)
  drawn_B: jax.Array  # tokens drawn so far (the draw counter of the row's random key)
  sampling: generate.Sampling


def default_buckets(max_len: int) -> tuple[int, ...]:
  buckets, size = [], min(SMALLEST_BUCKET, max_len)
  while size < max_len:
    buckets.append(size)
    size *= 2
  return tuple(buckets) + (max_len,)


def _scores(logits_BxV, token_B, top: int):
  """(log-prob of token_B, the `top` most likely ids, their log-probs) under the model."""
  logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
  chosen_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
  top_logp_BxT, top_ids_BxT = jax.lax.top_k(logp_BxV, top)
  return chosen_B, top_ids_BxT, top_logp_BxT


def _tokens(top: int, ids, logprobs, top_ids, top_logprobs) -> list[Token]:
  """Tokens from the programs' arrays, each with its `top` most likely alternatives."""
  ids, logprobs = ids.tolist(), logprobs.tolist()
  top_ids, top_logprobs = top_ids[:, :top].tolist(), top_logprobs[:, :top].tolist()
  return [Token(*token, tuple(zip(*alternatives)))
          for token, alternatives in zip(zip(ids, logprobs), zip(top_ids, top_logprobs))]


class Engine:
  """Continuous batching for a `gpt.Decoder` (see the module docstring)."""

  def __init__(self, model: gpt.Decoder, params, num_slots: int = 8, max_waiting: int = 64,
               buckets: Sequence[int] = (), metrics: ServeMetrics | None = None):
    devices = {d for leaf in jax.tree.leaves(params) for d in leaf.devices()}
    if len(devices) != 1:
      raise ConfigError(f"the engine serves from one device, the parameters are on "
                        f"{len(devices)}; load the run with devices=jax.devices()[:1]")
    if num_slots < 1 or max_waiting < 0:
      raise ConfigError(f"slots={num_slots} must be at least 1, max_waiting={max_waiting} at "
                        f"least 0")
    self.model, self.params, self.cfg = model, params, model.cfg
    self.device = devices.pop()
    self.num_slots, self.max_waiting = num_slots, max_waiting
    self.buckets = tuple(sorted(set(buckets) | {self.cfg.max_len}))
    if self.buckets[0] < 1 or self.buckets[-1] > self.cfg.max_len:
      raise ConfigError(f"prefill buckets {self.buckets} must lie in 1..max_len="
                        f"{self.cfg.max_len}")
    self.top = min(MAX_TOP_LOGPROBS, self.cfg.vocab_size)
    self.metrics = metrics or ServeMetrics(num_slots)
    self._unrecorded = ServeMetrics(num_slots)  # where probes' figures go
    self.ready = False  # compiled and warmed up
    self.error: str | None = None  # why the engine loop stopped
    self._waiting: collections.deque[Request] = collections.deque()
    self._active: list[Request | None] = [None] * num_slots
    self._wakeup = threading.Condition()
    self._stopping = False
    self._outbox: dict[Any, list] = collections.defaultdict(list)
    self._in_flight = None  # (outputs, slot holders) of the decode step the device is running
    self._thread = threading.Thread(target=self._run, name="bigjax-engine", daemon=True)

  # The asyncio side.

  def start(self) -> None:
    """Compiles, warms up and runs the loop on the engine thread; returns at once."""
    self._thread.start()

  def stop(self) -> None:
    with self._wakeup:
      self._stopping = True
      self._wakeup.notify()
    self._thread.join()

  def submit(self, requests: Sequence[Request], bypass_queue_limit: bool = False) -> None:
    """Queues every request or none (503 material: EngineUnavailable). From an event loop."""
    loop = asyncio.get_running_loop()
    with self._wakeup:
      if self.error is not None or self._stopping:
        raise EngineUnavailable(f"the engine has stopped: {self.error or 'shutting down'}")
      if not bypass_queue_limit and len(self._waiting) + len(requests) > self.max_waiting:
        raise EngineUnavailable(f"the queue is full ({len(self._waiting)} sequences wait for "
                                f"a slot, this request adds {len(requests)}, the limit is "
                                f"{self.max_waiting}); retry shortly", retry_after=1)
      for request in requests:
        request._loop, request._queue = loop, asyncio.Queue()
        request.submitted = time.monotonic()
        self._waiting.append(request)
      self._wakeup.notify()

  def cancel(self, request: Request) -> None:
    """Frees the request's slot (or queue place) at the engine's next turn."""
    with self._wakeup:
      request.cancelled = True
      self._wakeup.notify()

  async def events(self, request: Request, timeout: float) -> AsyncIterator[Token]:
    """The request's tokens as they come; `request.finish_reason` is set once it ends. Cancels
    the request if the caller stops early, and after `timeout` seconds (TimeoutError)."""
    deadline = request.submitted + timeout
    try:
      while True:
        event = await asyncio.wait_for(request._queue.get(), deadline - time.monotonic())
        if isinstance(event, Finished):
          if event.reason == "error":
            raise EngineError(event.error)
          request.finish_reason = event.reason
          return
        yield event
    finally:
      if request.finish_reason is None:
        self.cancel(request)

  # The engine thread.

  def _run(self) -> None:
    try:
      self._compile()
      self._warm_up()
      self.ready = True
      while not self._stopping:
        self._turn()
    except Exception as e:  # every waiting client hears why, then /ready turns 503
      with self._wakeup:
        self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failed = list(self._waiting) + [r for r in self._active if r is not None]
        self._waiting.clear()
        self._active = [None] * self.num_slots
      self.metrics.set_load(0, 0, self.num_slots)
      for request in failed:
        self._send(request, Finished("error", self.error))
      self._flush()
      log.exception("the engine loop stopped")

  def _turn(self) -> None:
    for slot, request in enumerate(self._active):
      if request is not None and request.cancelled:
        self._finish(slot, request, "cancelled")
    self._admit()
    running = sum(r is not None for r in self._active)
    self.metrics.set_load(running, len(self._waiting), self.num_slots)
    if running:
      self._step()
    else:
      self._in_flight = None  # a step whose sequences have all ended since it started
      with self._wakeup:
        if not self._waiting and not self._stopping:
          self._wakeup.wait(timeout=0.5)
    self._flush()

  def _admit(self) -> None:
    """Fills free slots from the queue (a prefill can end its sequence at once: fill again)."""
    for slot in range(self.num_slots):
      while self._active[slot] is None:
        with self._wakeup:
          request = self._waiting.popleft() if self._waiting else None
        if request is None:
          return
        if request.cancelled:
          self._finish(None, request, "cancelled")
        else:
          self._prefill(slot, request)

  def _prefill(self, slot: int, request: Request) -> None:
    n = len(request.prompt)
    bucket = next(b for b in self.buckets if b >= n)
    tokens_1xP = np.zeros((1, bucket), np.int32)
    tokens_1xP[0, :n] = request.prompt
    s = generate.sampling(1, request.temperature, request.top_k, request.top_p, request.seed)
    self._active[slot] = request  # first: if the program fails, the request hears why
    self._slots, out = self._prefill_programs[bucket](
        self.params, self._slots, tokens_1xP, np.int32(n), np.int32(slot), s,
        np.bool_(request.prompt_logprobs))
    first, prompt = jax.device_get(out)
    if request.prompt_logprobs:
      request.prompt_scores = _tokens(request.top_logprobs, tokens_1xP[0, 1:n],
                                      *(x[:n - 1] for x in prompt))
    self._metrics(request).prompt.inc(n)
    self._emit(slot, request, _tokens(request.top_logprobs, *first)[0])

  def _step(self) -> None:
    """Starts the next decode step, then hands out the previous step's tokens while the device
    computes: the host's work hides behind the device's. A sequence that ended in the previous
    step has one more token computed in this one, which nobody reads."""
    self._slots, out = self._decode_program(self.params, self._slots)
    previous, self._in_flight = self._in_flight, (out, list(self._active))
    if previous is not None:
      self._hand_out(*previous)

  def _hand_out(self, out, holders: list[Request | None]) -> None:
    """A decode step's tokens to the requests that held the slots when it started, if they
    still do (not finished, cancelled or replaced since)."""
    ids_B, logprobs_B, top_ids_BxT, top_logprobs_BxT = jax.device_get(out)
    # Alternatives are read for the rows that asked for them: this runs every step.
    top = max((r.top_logprobs for r in holders if r is not None), default=0)
    tokens = _tokens(top, ids_B, logprobs_B, top_ids_BxT, top_logprobs_BxT)
    for slot, request in enumerate(holders):
      if request is not None and self._active[slot] is request:
        token = tokens[slot]
        if len(token.top) > request.top_logprobs:
          token = dataclasses.replace(token, top=token.top[:request.top_logprobs])
        self._emit(slot, request, token)

  def _emit(self, slot: int, request: Request, token: Token) -> None:
    metrics = self._metrics(request)
    if not request.generated:
      request.first_token_at = time.monotonic()
      metrics.time_to_first_token.observe(request.first_token_at - request.submitted)
    if token.id in request.stop_tokens:
      return self._finish(slot, request, "stop")
    request.generated += 1
    metrics.generated.inc()
    self._send(request, token)
    if request.generated >= request.max_tokens:
      self._finish(slot, request, "length")

  def _finish(self, slot: int | None, request: Request, reason: str) -> None:
    """Frees the slot (None: the request never had one) and tells the request why it ended."""
    if slot is not None:
      self._active[slot] = None
    now, metrics = time.monotonic(), self._metrics(request)
    metrics.finished.labels(reason).inc()
    if reason != "cancelled":
      metrics.latency.observe(now - request.submitted)
      if request.generated > 1:
        metrics.time_per_output_token.observe(
            (now - request.first_token_at) / (request.generated - 1))
    self._send(request, Finished(reason))

  def _metrics(self, request: Request) -> ServeMetrics:
    return self._unrecorded if request.probe else self.metrics

  def _send(self, request: Request, event) -> None:
    self._outbox[request._loop].append((request._queue, event))

  def _flush(self) -> None:
    """Hands this turn's events to each event loop in one call (one wake-up per turn)."""
    outbox, self._outbox = self._outbox, collections.defaultdict(list)
    for loop, events in outbox.items():
      try:
        loop.call_soon_threadsafe(_put_all, events)
      except RuntimeError:  # that loop has closed: nobody is listening
        pass

  # Programs.

  def _prefill_insert(self, params, slots: Slots, tokens_1xP, length, slot, s, score_prompt):
    """Prefills one prompt into a cache of its own, copies it into `slot`'s rows and draws the
    first token. Slots past the prompt keep the previous occupant's keys: the mask hides them
    until this sequence overwrites them."""
    cache_1 = gpt.init_cache(self.cfg, 1, tokens_1xP.shape[1])
    last_1xV, logits_1xPxV, cache_1 = generate.prefill(self.model, params, tokens_1xP,
                                                       length[None], cache_1)
    token_1 = generate.sample(last_1xV, s, jnp.zeros(1, jnp.int32))
    batch_axis = 1 if self.cfg.scan_layers else 0  # scanned caches lead with the layer axis
    def insert(big, small):
      start = [0] * big.ndim
      start[batch_axis] = slot
      return jax.lax.dynamic_update_slice(big, small, start)
    put = lambda row_B, value: row_B.at[slot].set(value[0] if value.ndim else value)
    slots = Slots(jax.tree.map(insert, slots.cache, cache_1), put(slots.token_B, token_1),
                  put(slots.index_B, length), put(slots.drawn_B, jnp.ones((), jnp.int32)),
                  generate.Sampling(*map(put, slots.sampling, s)))
    P, top = tokens_1xP.shape[1], self.top
    prompt_scores = jax.lax.cond(  # next-token scores of the prompt itself, when asked
        score_prompt, lambda: _scores(logits_1xPxV[0, :-1], tokens_1xP[0, 1:], top),
        lambda: (jnp.zeros(P - 1), jnp.zeros((P - 1, top), jnp.int32), jnp.zeros((P - 1, top))))
    return slots, ((token_1,) + _scores(last_1xV, token_1, self.top), prompt_scores)

  def _decode(self, params, slots: Slots):
    """One token for every slot (free slots compute too: one program shape for any load)."""
    logits_BxV, cache = generate.decode_step(self.model, params, slots.token_B, slots.index_B,
                                             slots.cache)
    token_B = generate.sample(logits_BxV, slots.sampling, slots.drawn_B)
    # A free slot's index would run past the cache: hold it at the last position.
    index_B = jnp.minimum(slots.index_B + 1, self.cfg.max_len - 1)
    slots = Slots(cache, token_B, index_B, slots.drawn_B + 1, slots.sampling)
    return slots, (token_B,) + _scores(logits_BxV, token_B, self.top)

  def _empty_slots(self) -> Slots:
    B = self.num_slots
    zeros = lambda dtype: np.zeros(B, dtype)
    slots = Slots(gpt.init_cache(self.cfg, B, self.cfg.max_len), zeros(np.int32),
                  zeros(np.int32), zeros(np.int32),
                  generate.sampling(B, temperature=0.0))
    return jax.device_put(slots, self.device)

  def _compile(self) -> None:
    """Lowers the decode program and one prefill program per bucket, compiles them at once."""
    self._slots = self._empty_slots()
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
    row = generate.sampling(1)
    lowered = {"decode": jax.jit(self._decode, donate_argnums=1).lower(self.params, self._slots)}
    prefill = jax.jit(self._prefill_insert, donate_argnums=1)
    for bucket in self.buckets:
      lowered[bucket] = prefill.lower(self.params, self._slots,
                                      jax.ShapeDtypeStruct((1, bucket), jnp.int32),
                                      scalar(jnp.int32), scalar(jnp.int32), row,
                                      scalar(jnp.bool_))
    with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="compile") as pool:
      compiled = dict(zip(lowered, pool.map(lambda program: program.compile(),
                                            lowered.values())))
    self._decode_program = compiled.pop("decode")
    self._prefill_programs = compiled

  def _warm_up(self) -> None:
    """One request end to end (prefill, then a decode step), so the first client waits for
    nothing that startup could have done. Nobody listens to its tokens."""
    self._prefill(0, Request(np.zeros(1, np.int32), max_tokens=3, temperature=0.0, probe=True))
    self._step()
    self._step()
    self._outbox.clear()
    self._active, self._in_flight = [None] * self.num_slots, None


def _put_all(events) -> None:
  for queue, event in events:
    queue.put_nowait(event)
