"""The endpoints of encoder and encoder-decoder runs, each computed by the run's own task.

    task=mlm            POST /v1/embeddings
    task=text_classify  POST /v1/classify (labels and probabilities), POST /v1/embeddings
    task=seq2seq        POST /v1/translate (beam search as the run's config.seq2seq sets it)

Embeddings average the encoder's last hidden states over the input's tokens. Inputs go through
one compiled program per endpoint, in blocks of `rows` (the last block padded), each of the
length the run trained on; a worker thread runs them so the event loop keeps serving.
"""

import asyncio
import threading

import jax
import numpy as np

from bigjax.load import LoadedRun
from bigjax.tasks import mlm

ENDPOINTS = {"mlm": ("embeddings",), "text_classify": ("classify", "embeddings"),
             "seq2seq": ("translate",)}


class Encoders:
  """Compiled programs for the run's endpoints; `start` compiles them on a thread of its own."""

  def __init__(self, run: LoadedRun, rows: int = 8):
    self.run, self.task, self.rows = run, run.task, rows
    self.endpoints = ENDPOINTS[run.config.task]
    self.seq_len = run.config.seq_len
    self.ready = False
    self.error: str | None = None
    self._lock = threading.Lock()  # one block on the device at a time: no thrashing
    self._programs = {name: jax.jit(self._program(name)) for name in self.endpoints}

  def _program(self, endpoint: str):
    """(params, inputs_RxL) -> the endpoint's answer for each row, from the task's own code."""
    if endpoint == "embeddings":
      pad = self.task.special.pad
      return lambda params, x: mlm.encoder_embeddings(self.run.model, params, x, pad)
    return self.task.probabilities if endpoint == "classify" else self.task.translate

  def start(self) -> None:
    threading.Thread(target=self._warm_up, name="bigjax-encoders", daemon=True).start()

  def _warm_up(self) -> None:
    try:
      for name in self.endpoints:
        self._run(name, [self._inputs(name, "a")])
      self.ready = True
    except Exception as e:
      self.error = f"{type(e).__name__}: {e}"
      raise

  def _inputs(self, endpoint: str, text: str) -> np.ndarray:
    """One input row; a ConfigError (a 400) when the text is longer than the model reads."""
    if endpoint == "translate":
      return self.task.source_inputs(text)
    return mlm.encoder_inputs(self.task.tokenizer.encode(text), self.seq_len, self.task.special)

  def _run(self, endpoint: str, inputs: list[np.ndarray]) -> np.ndarray:
    """The endpoint's program over the inputs, `rows` at a time, the last block padded."""
    program, outputs = self._programs[endpoint], []
    for start in range(0, len(inputs), self.rows):
      block = inputs[start:start + self.rows]
      block_RxL = np.stack(block + [block[0]] * (self.rows - len(block)))
      with self._lock:
        outputs.append(np.asarray(program(self.run.params, block_RxL))[:len(block)])
    return np.concatenate(outputs)

  async def answer(self, endpoint: str, texts: list[str]) -> tuple[list[dict], int]:
    """(one result per text, input tokens counted)."""
    inputs = [self._inputs(endpoint, text) for text in texts]
    tokens = sum(int((x != self.task.special.pad).sum()) for x in inputs)
    out = await asyncio.to_thread(self._run, endpoint, inputs)
    if endpoint == "embeddings":
      return [{"object": "embedding", "embedding": row.tolist()} for row in out], tokens
    if endpoint == "classify":
      names = self.task.class_names
      return [{"object": "classification", "label": names[int(row.argmax())],
               "probabilities": dict(zip(names, map(float, row)))} for row in out], tokens
    return [{"object": "translation", "text": self.task.output_text(row)} for row in out], tokens
