"""Token streams cut into windows: language-model examples, and the chunks masked-LM wraps.

Packing: documents are tokenized and concatenated with an end-of-document token between them,
then cut into non-overlapping windows of seq_len + 1 tokens (inputs and next-token targets), so
no position is padding. A stream is a NumPy array (a corpus read into memory) or a
`shards.ShardStream` (a prepared corpus read from disk window by window): anything with a length
whose slices are token arrays.
"""

from typing import Sequence

import numpy as np

from bigjax.data.tokenizers import Tokenizer


def pack(documents: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
  """One token stream: each document followed by the end-of-document token."""
  pieces = []
  for doc in documents:
    pieces += [tokenizer.encode(doc), np.array([tokenizer.eos_id], np.int32)]
  dtype = token_dtype(tokenizer.vocab_size)
  return np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)


def token_dtype(vocab_size: int) -> np.dtype:
  """The narrowest unsigned integer that holds every id: half the memory of int32 for most."""
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class TokenWindows:
  """Random-access windows of a token stream: item i holds tokens [i*L, i*L + L + overlap).

  overlap=1 (language modelling): each window carries the target of its last input, and every
  token is an input exactly once. overlap=0: plain non-overlapping chunks.
  """

  def __init__(self, stream, seq_len: int, overlap: int = 1):
    self.stream, self.seq_len, self.overlap = stream, seq_len, overlap

  def __len__(self) -> int:
    return max(0, (len(self.stream) - self.overlap) // self.seq_len)

  def __getitem__(self, i: int) -> np.ndarray:
    start = i * self.seq_len
    return np.asarray(self.stream[start:start + self.seq_len + self.overlap], np.int32)


def as_example(window_L1: np.ndarray) -> dict[str, np.ndarray]:
  """Inputs are a window's first L tokens, targets its last L (the next token at each place);
  a stack of windows gives a batch."""
  return {"inputs": window_L1[..., :-1], "targets": window_L1[..., 1:]}
