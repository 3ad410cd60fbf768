"""The decoder routes, /v1/completions and /v1/chat/completions, over the engine.

Each prompt becomes `n` engine sequences (`Choice`s). A choice's tokens turn into text through a
TextStream (stop strings; incomplete characters held back), and the pieces of several choices are
merged as they come: streamed as server-sent events, or collected into one response. A client
that goes away cancels its sequences, which frees their slots at the engine's next turn.
"""

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from typing import AsyncIterator

import numpy as np
from fastapi import Request
from sse_starlette.sse import EventSourceResponse

from bigjax import generate
from bigjax.config_checks import ConfigError
from bigjax.data import chat
from bigjax.load import LoadedRun
from bigjax.serve import engine as engine_lib
from bigjax.serve import protocol as p
from bigjax.serve.detokenize import TextStream
from bigjax.serve.protocol import APIError


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
    running = len(streams)
    while running:
      i, item, error = await queue.get()
      if error is not None:
        raise error
      running -= item is END
      yield i, item
  finally:
    for task in tasks:
      task.cancel()


class Completions:
  """The decoder routes' handlers, for a run served by `engine`."""

  def __init__(self, run: LoadedRun, engine: engine_lib.Engine, options):
    self.run, self.engine, self.options, self.tokenizer = run, engine, options, run.tokenizer
    self.max_len = run.model.cfg.max_len

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
    p.check_model(body.model, self.options.model_name)
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
    p.check_model(body.model, self.options.model_name)
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
                            add_generation_prompt=True,
                            special_tokens=self.run.tokenizer.template_tokens())
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
