"""Sequence-to-sequence examples: (source, target) string pairs as padded token arrays.

Pairs come from an algorithmic task drawn on the fly (reverse, sort, addition of digit strings:
offline, endless, pair i a function of the index) or from a tfds translation set read by index.
"""

from typing import Callable

import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import tfds_source
from bigjax.data.tokenizers import SpecialTokens

def _digits(rng, low: int, high: int) -> str:
  return "".join(rng.choice(list("0123456789"), size=int(rng.integers(low, high + 1))))


def _reverse(rng, n: int) -> tuple[str, str]:
  x = _digits(rng, 1, n)
  return x, x[::-1]


def _sort(rng, n: int) -> tuple[str, str]:
  x = _digits(rng, 1, n)
  return x, "".join(sorted(x))


def _addition(rng, n: int) -> tuple[str, str]:
  a, b = int(_digits(rng, 1, (n - 1) // 2)), int(_digits(rng, 1, (n - 1) // 2))
  return f"{a}+{b}", str(a + b)


# Algorithmic tasks: rng, longest source -> (source, target) strings.
ALGORITHMIC: dict[str, Callable[[np.random.Generator, int], tuple[str, str]]] = {
    "reverse": _reverse, "sort": _sort, "addition": _addition}


class Seq2SeqExamples:
  """(source, target) string pairs -> padded encoder inputs, decoder inputs and targets.

  Decoder inputs are [BOS] y, targets y [EOS] (teacher forcing); both are cut to seq_len.
  """

  def __init__(self, pairs: Callable[[int], tuple[str, str]], size: int, tokenizer,
               seq_len: int, special: SpecialTokens):
    self.pairs, self.size, self.tokenizer = pairs, size, tokenizer
    self.seq_len, self.special = seq_len, special

  def __len__(self) -> int:
    return self.size

  def _padded(self, ids) -> np.ndarray:
    out = np.full(self.seq_len, self.special.pad, np.int32)
    ids = np.asarray(ids, np.int32)[:self.seq_len]
    out[:len(ids)] = ids
    return out

  def example(self, i: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng  # pairs are a function of the index alone
    source, target = self.pairs(i)
    y = self.tokenizer.encode(target)
    return {"inputs": self._padded(self.tokenizer.encode(source)),
            "decoder_inputs": self._padded(np.concatenate([[self.special.bos], y])),
            "targets": self._padded(np.concatenate([y, [self.tokenizer.eos_id]]))}


def algorithmic_pairs(name: str, seq_len: int, seed: int) -> Callable[[int], tuple[str, str]]:
  """Pair i of an endless algorithmic dataset; sources fit seq_len, targets fit with [EOS]."""
  if name not in ALGORITHMIC:
    raise ConfigError(f"data.name={name!r} is not an algorithmic task; use one of "
                      f"{', '.join(ALGORITHMIC)}")
  if seq_len < 4:
    raise ConfigError(f"seq_len={seq_len} is too short for an algorithmic task; use at least 4")
  make = ALGORITHMIC[name]
  return lambda i: make(np.random.default_rng([seed, i]), seq_len - 1)


# Translation: tfds name -> (source language, target language), the keys of its Translation feature.
TFDS_TRANSLATION_DATASETS = {"wmt14_translate/de-en": ("de", "en"),
                             "wmt_t2t_translate/de-en": ("de", "en")}


def tfds_translation_pairs(name: str, split: str, tfds_dir: str):
  """(pair i of the split as (source, target) text, number of pairs), read by index on demand.

  Nothing is read ahead: WMT's train split holds millions of pairs, and grain asks for a record only
  when its batch is built.
  """
  if name not in TFDS_TRANSLATION_DATASETS:
    raise ConfigError(f"data.name={name!r} is not a known translation dataset; use one of "
                      f"{', '.join(TFDS_TRANSLATION_DATASETS)}")
  source_lang, target_lang = TFDS_TRANSLATION_DATASETS[name]
  records = tfds_source.data_source(name, split, tfds_dir)
  text = lambda value: value.decode("utf-8") if isinstance(value, bytes) else value  # mock: str

  def pair(i: int) -> tuple[str, str]:
    record = records[i]
    return text(record[source_lang]), text(record[target_lang])

  return pair, len(records)
