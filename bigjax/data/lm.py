"""Language-model batches: documents -> packed token stream -> fixed windows -> grain pipeline.

Packing: documents are tokenized and concatenated with an end-of-document token between them,
then cut into non-overlapping windows of seq_len + 1 tokens (inputs and next-token targets), so
no position is padding. Training windows are shuffled by grain, differently every epoch, and
batched per process; the grain iterator's state (a position) goes into every checkpoint, so a
resumed run reads exactly the batches an uninterrupted one would have read.
"""

from typing import Iterator, Sequence

import grain
import numpy as np

from bigjax.data.tokenizers import Tokenizer


def pack(documents: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
  """One token stream: each document followed by the end-of-document token."""
  pieces = []
  for doc in documents:
    pieces += [tokenizer.encode(doc), np.array([tokenizer.eos_id], np.int32)]
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  return np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)


class TokenWindows:
  """Random-access windows of a token stream: item i holds tokens [i*L, i*L + L + 1)."""

  def __init__(self, stream: np.ndarray, seq_len: int):
    self.stream, self.seq_len = stream, seq_len

  def __len__(self) -> int:
    return max(0, (len(self.stream) - 1) // self.seq_len)

  def __getitem__(self, i: int) -> np.ndarray:
    start = i * self.seq_len
    return self.stream[start:start + self.seq_len + 1].astype(np.int32)


def as_batch(windows_BxL1: np.ndarray) -> dict[str, np.ndarray]:
  """Inputs are a window's first L tokens, targets its last L (the next token at each place)."""
  return {"inputs": windows_BxL1[:, :-1], "targets": windows_BxL1[:, 1:]}


def train_dataset(windows: TokenWindows, local_batch: int, seed: int) -> grain.IterDataset:
  """Endless shuffled batches of this process's windows; reshuffled each epoch."""
  ds = grain.MapDataset.source(windows).shuffle(seed=seed).repeat()
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=lambda w: as_batch(np.stack(w)))
  return ds.to_iter_dataset()


def eval_batches(windows: TokenWindows, local_batch: int, num_batches: int) -> Iterator[dict]:
  """The same evenly spaced validation windows at every evaluation, so evals compare."""
  count = local_batch * num_batches
  index = np.linspace(0, len(windows) - 1, count).round().astype(int) if count else []
  for b in range(num_batches):
    rows = [windows[i] for i in index[b * local_batch:(b + 1) * local_batch]]
    yield as_batch(np.stack(rows))
