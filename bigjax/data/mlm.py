"""Masked-LM examples: chunks of a token stream wrapped as [CLS] A [SEP] (B [SEP]) and corrupted.

Every example is a pure function of (stream, index, generator), and the generator is seeded by
the example's position (bigjax.data.pipeline), so a resumed run masks exactly as an uninterrupted
one, and evaluation sees the same masks every time.
"""

import numpy as np

from bigjax.data.lm import TokenWindows
from bigjax.data.tokenizers import SpecialTokens


def mask_tokens(tokens_L: np.ndarray, maskable_L: np.ndarray, rng: np.random.Generator,
                special: SpecialTokens, rate: float) -> tuple[np.ndarray, np.ndarray]:
  """BERT's corruption: (inputs_L, weights_L), weights 1 where the loss is taken.

  round(rate x maskable) positions are chosen (at least one); of those 80% become [MASK], 10% a
  random ordinary token and 10% stay as they are, so the model cannot tell from the input which
  positions it is graded on.
  """
  candidates = np.flatnonzero(maskable_L)
  count = max(1, int(round(rate * len(candidates))))
  chosen = rng.choice(candidates, size=count, replace=False)
  action = rng.random(count)
  inputs_L = tokens_L.copy()
  to_mask, to_random = chosen[action < 0.8], chosen[(action >= 0.8) & (action < 0.9)]
  inputs_L[to_mask] = special.mask
  inputs_L[to_random] = rng.integers(0, special.base_vocab, size=len(to_random))
  weights_L = np.zeros(len(tokens_L), np.float32)
  weights_L[chosen] = 1.0
  return inputs_L, weights_L



class MlmExamples:
  """Masked-LM examples over a token stream: [CLS] A [SEP], or [CLS] A [SEP] B [SEP] with NSP.

  With next-sentence prediction, A and B are the two halves of one chunk (label 0, "is next") or
  A and the second half of a random other chunk (label 1), with equal odds.
  """

  def __init__(self, stream, seq_len: int, special: SpecialTokens, rate: float,
               nsp: bool):
    self.chunks = TokenWindows(stream, seq_len - (3 if nsp else 2), overlap=0)
    self.seq_len, self.special, self.rate, self.nsp = seq_len, special, rate, nsp

  def __len__(self) -> int:
    return len(self.chunks)

  def example(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    s, chunk = self.special, self.chunks[i]
    if self.nsp:
      half = len(chunk) // 2
      is_random = rng.random() < 0.5
      b = self.chunks[int(rng.integers(len(self.chunks)))][half:] if is_random else chunk[half:]
      tokens_L = np.concatenate([[s.cls], chunk[:half], [s.sep], b, [s.sep]]).astype(np.int32)
      types_L = np.zeros(self.seq_len, np.int32)
      types_L[half + 2:] = 1
    else:
      tokens_L = np.concatenate([[s.cls], chunk, [s.sep]]).astype(np.int32)
    inputs_L, weights_L = mask_tokens(tokens_L, ~s.is_special(tokens_L), rng, s, self.rate)
    out = {"inputs": inputs_L, "targets": tokens_L, "weights": weights_L}
    if self.nsp:
      out |= {"types": types_L, "nsp_labels": np.int32(is_random)}
    return out
