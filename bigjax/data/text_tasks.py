"""Examples for the encoder tasks: masked-LM windows, text classification and seq2seq pairs.

Every example is a pure function of (dataset, index, seed): masks and random pairs are drawn from
a generator seeded by the record's position, so a resumed run (grain restores its position) sees
exactly the examples an uninterrupted run would have seen, and evaluation sees the same examples
every time.

Special ids sit above the tokenizer's own ids, so the byte tokenizer keeps ids 0..255 for bytes
(0 still ends a document) and the encoder vocabulary is 256 + 5. A BERT WordPiece brings its own
[PAD] [CLS] [SEP] [MASK] (bigjax.hf.tokenizer.VocabularySpecialTokens, the same interface).
"""

import dataclasses
import pathlib
import sysconfig
from typing import Callable, Sequence

import grain
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import lm as lm_data
from bigjax.data import sources, tfds_source


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """[PAD] [BOS] [CLS] [SEP] [MASK], numbered from the first id the tokenizer does not use."""

  base_vocab: int

  @property
  def pad(self) -> int:
    return self.base_vocab

  @property
  def bos(self) -> int:  # first decoder input of a seq2seq target
    return self.base_vocab + 1

  @property
  def cls(self) -> int:
    return self.base_vocab + 2

  @property
  def sep(self) -> int:
    return self.base_vocab + 3

  @property
  def mask(self) -> int:
    return self.base_vocab + 4

  @property
  def vocab_size(self) -> int:
    return self.base_vocab + 5

  def is_special(self, tokens: np.ndarray) -> np.ndarray:
    return tokens >= self.base_vocab


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


class Chunks:
  """Random-access non-overlapping chunks of `size` tokens of a token stream."""

  def __init__(self, stream: np.ndarray, size: int):
    self.stream, self.size = stream, size

  def __len__(self) -> int:
    return len(self.stream) // self.size

  def __getitem__(self, i: int) -> np.ndarray:
    return self.stream[i * self.size:(i + 1) * self.size].astype(np.int32)


class MlmExamples:
  """Masked-LM examples over a token stream: [CLS] A [SEP], or [CLS] A [SEP] B [SEP] with NSP.

  With next-sentence prediction, A and B are the two halves of one chunk (label 0, "is next") or
  A and the second half of a random other chunk (label 1), with equal odds.
  """

  def __init__(self, stream: np.ndarray, seq_len: int, special: SpecialTokens, rate: float,
               nsp: bool):
    self.chunks = Chunks(stream, seq_len - (3 if nsp else 2))
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


def stack(examples: Sequence[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def train_dataset(examples, local_batch: int, seed: int) -> grain.IterDataset:
  """Endless shuffled batches; `examples.example(i, rng)` draws its randomness from grain's rng,
  which grain seeds from (seed, position), so every epoch re-masks differently and reproducibly."""
  ds = grain.MapDataset.source(range(len(examples))).shuffle(seed=seed).repeat()
  ds = ds.random_map(lambda i, rng: examples.example(i, rng), seed=seed)
  return ds.batch(local_batch, drop_remainder=True, batch_fn=stack).to_iter_dataset()


def eval_batches(examples, local_batch: int, num_batches: int, seed: int):
  """The same evenly spaced examples, drawn with the same randomness, at every evaluation."""
  count = local_batch * num_batches
  index = np.linspace(0, len(examples) - 1, count).round().astype(int)
  for b in range(num_batches):
    rows = index[b * local_batch:(b + 1) * local_batch]
    yield stack([examples.example(int(i), np.random.default_rng([seed, int(i)])) for i in rows])


# Text classification.

# Standard-library packages whose sources the offline classifier tells apart: each has its own
# vocabulary (event loops, mail headers, Tk widgets, assertions), so a snippet names its family.
STDLIB_FAMILIES = ("asyncio", "email", "tkinter", "unittest")
TFDS_CLASSIFY_DATASETS = {"imdb_reviews": ("text", "label", ("neg", "pos"))}


class ClassifyExamples:
  """Balanced [CLS] text [SEP] examples: item i is class i % C, its (i // C)-th snippet."""

  def __init__(self, snippets_per_class: list[list[np.ndarray]], class_names: Sequence[str],
               seq_len: int, special: SpecialTokens):
    self.snippets, self.class_names = snippets_per_class, tuple(class_names)
    self.seq_len, self.special = seq_len, special

  def __len__(self) -> int:
    return len(self.class_names) * max(len(s) for s in self.snippets)

  def example(self, i: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng  # classification examples are fixed; the argument keeps one interface with MLM
    label = i % len(self.class_names)
    snippets = self.snippets[label]
    text = snippets[(i // len(self.class_names)) % len(snippets)][:self.seq_len - 2]
    s = self.special
    tokens_L = np.full(self.seq_len, s.pad, np.int32)
    tokens_L[:len(text) + 2] = np.concatenate([[s.cls], text, [s.sep]])
    return {"inputs": tokens_L, "labels": np.int32(label)}


def stdlib_family_snippets(split: str, tokenizer, seq_len: int, val_fraction: float,
                           process_index: int = 0, process_count: int = 1):
  """Per family, chunks of seq_len - 2 tokens of its .py files; files split by name hash, so
  validation snippets come from files the model never saw."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  per_class = []
  for family in STDLIB_FAMILIES:
    files = [f for f in sources.stdlib_files()
             if f.relative_to(root).parts[0] == family
             and sources.is_validation(str(f.relative_to(root)), val_fraction)
             == (split == "validation")]
    docs = sources.process_share([f.read_text("utf-8", errors="replace") for f in files],
                                 process_index, process_count)
    chunks = Chunks(lm_data.pack(docs, tokenizer), seq_len - 2)
    if not len(chunks):
      raise ConfigError(f"stdlib family {family!r} has no {split} text for process "
                        f"{process_index}; lower seq_len or change data.val_fraction")
    per_class.append([chunks[i] for i in range(len(chunks))])
  return per_class, STDLIB_FAMILIES


def tfds_classify_snippets(name: str, split: str, tokenizer, seq_len: int, tfds_dir: str,
                           process_index: int = 0, process_count: int = 1):
  """Per class, the tokenized (truncated) texts of a tfds text-classification set."""
  if name not in TFDS_CLASSIFY_DATASETS:
    raise ConfigError(f"data.name={name!r} is not a known text-classification dataset; use "
                      f"one of {', '.join(TFDS_CLASSIFY_DATASETS)}")
  text_key, label_key, class_names = TFDS_CLASSIFY_DATASETS[name]
  source = tfds_source.data_source(name, "test" if split == "validation" else split, tfds_dir)
  per_class = [[] for _ in class_names]
  for i in sources.process_share(range(len(source)), process_index, process_count):
    record = source[i]
    text = record[text_key].decode("utf-8", errors="replace")
    per_class[int(record[label_key])].append(tokenizer.encode(text)[:seq_len - 2])
  if not all(per_class):
    raise ConfigError(f"tfds {name} split {split} lacks examples of some class for process "
                      f"{process_index}")
  return per_class, class_names


# Sequence to sequence.

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
