"""Batches prepared on a background thread while the current step runs.

The loop's thread only dispatches steps; reading, tokenizing, masking and batching (the task's
grain pipeline) and the host-to-device copy of the next batches happen here, `size` batches
ahead. Checkpoints must record the data position of the batches the loop has *consumed*, not of
the ones prefetched, so each batch travels with the iterator state taken right after it.
"""

import queue
import threading
from typing import Any, Callable

from bigjax.tasks.base import DataIterator

_POLL_SECONDS = 0.1  # how often a blocked producer checks whether it should stop


class Prefetcher:
  """An iterator of device batches over a checkpointable host iterator, `size` batches ahead."""

  def __init__(self, iterator: DataIterator, to_device: Callable[[dict], Any], size: int = 2):
    self._iterator, self._to_device = iterator, to_device
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._state = iterator.get_state()
    self._thread: threading.Thread | None = None
    self._closing = threading.Event()

  def set_state(self, state: dict) -> None:
    """Moves the position (before the first batch is drawn: a resumed run)."""
    if self._thread is not None:
      raise RuntimeError("set_state after prefetching started")
    self._iterator.set_state(state)
    self._state = state

  def get_state(self) -> dict:
    """The position after the last batch handed out."""
    return self._state

  def __iter__(self):
    return self

  def __next__(self):
    if self._thread is None:
      self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
      self._thread.start()
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    batch, self._state = item
    return batch

  def _produce(self) -> None:
    try:
      while not self._closing.is_set():
        local = next(self._iterator)
        self._put((self._to_device(local), self._iterator.get_state()))
    except BaseException as e:  # handed to the consumer, raised there where it can be seen
      self._put(e)

  def _put(self, item) -> None:
    while not self._closing.is_set():
      try:
        self._queue.put(item, timeout=_POLL_SECONDS)
        return
      except queue.Full:
        continue

  def close(self) -> None:
    self._closing.set()
    if self._thread is not None:
      self._thread.join()
