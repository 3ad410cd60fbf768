"""Text-classification examples: [CLS] text [SEP], padded, with the text's class.

Sources: four standard-library package families told apart by a snippet of their code (offline),
or a tfds text-classification set (imdb_reviews). Every process reads the whole split, so any
process can read any row of a global batch (bigjax.data.pipeline).
"""

import pathlib
import sysconfig
from typing import Sequence

import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import lm as lm_data
from bigjax.data import sources, tfds_source
from bigjax.data.tokenizers import SpecialTokens

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


def stdlib_family_snippets(split: str, tokenizer, seq_len: int, val_fraction: float):
  """Per family, chunks of seq_len - 2 tokens of its .py files; files split by name hash, so
  validation snippets come from files the model never saw."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  per_class = []
  for family in STDLIB_FAMILIES:
    files = [f for f in sources.stdlib_files()
             if f.relative_to(root).parts[0] == family
             and sources.is_validation(str(f.relative_to(root)), val_fraction)
             == (split == "validation")]
    docs = [f.read_text("utf-8", errors="replace") for f in files]
    chunks = lm_data.TokenWindows(lm_data.pack(docs, tokenizer), seq_len - 2, overlap=0)
    if not len(chunks):
      raise ConfigError(f"stdlib family {family!r} has no {split} text; lower seq_len or "
                        f"change data.val_fraction")
    per_class.append([chunks[i] for i in range(len(chunks))])
  return per_class, STDLIB_FAMILIES


def tfds_classify_snippets(name: str, split: str, tokenizer, seq_len: int, tfds_dir: str):
  """Per class, the tokenized (truncated) texts of a tfds text-classification set."""
  if name not in TFDS_CLASSIFY_DATASETS:
    raise ConfigError(f"data.name={name!r} is not a known text-classification dataset; use "
                      f"one of {', '.join(TFDS_CLASSIFY_DATASETS)}")
  text_key, label_key, class_names = TFDS_CLASSIFY_DATASETS[name]
  source = tfds_source.data_source(name, "test" if split == "validation" else split, tfds_dir)
  per_class = [[] for _ in class_names]
  for i in range(len(source)):
    record = source[i]
    text = record[text_key].decode("utf-8", errors="replace")
    per_class[int(record[label_key])].append(tokenizer.encode(text)[:seq_len - 2])
  if not all(per_class):
    raise ConfigError(f"tfds {name} split {split} lacks examples of some class")
  return per_class, class_names
