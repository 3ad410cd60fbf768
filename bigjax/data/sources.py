"""Where documents come from: Python's own sources, text files, tfds, or a local Hugging Face
dataset; read whole into memory, for corpora that fit (prepared shards are the way for larger
ones: bigjax.data.prepare, bigjax.data.shards).

Every process reads the whole split, so any process can read any row of a global batch (the rows
of a batch depend on its number, not on the number of processes: bigjax.data.pipeline).
"""

import codecs
import os
import pathlib
import sysconfig
import zlib

import ml_collections

from bigjax.config_checks import ConfigError
from bigjax.data import hf, tfds_source

TFDS_TEXT_DATASETS = {"tiny_shakespeare": "text", "lm1b": "text"}  # name -> text feature
# Language-model sources; "shards" streams from disk (bigjax.data.shards), the others are read here.
TEXT_SOURCES = ("stdlib", "text", "tfds", "hf", "shards")


def stdlib_files() -> list[pathlib.Path]:
  """The Python standard library's .py files, sorted, without site-packages."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def is_validation(name: str, val_fraction: float) -> bool:
  """Stable split by name hash: a file stays in its split whatever else is added or removed."""
  return zlib.crc32(name.encode()) % 10_000 < val_fraction * 10_000


def _stdlib_documents(split: str, data: ml_collections.ConfigDict) -> list[str]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = [f for f in stdlib_files()
           if is_validation(str(f.relative_to(root)), data.val_fraction) == (split == "validation")]
  return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def text_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The file `path`, or every file under the directory `path`, sorted."""
  return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _text_documents(split: str, data: ml_collections.ConfigDict) -> list[str]:
  """Each file's last `val_fraction` of characters is validation, as nanoGPT splits its text."""
  documents = []
  for text in (f.read_text(encoding="utf-8", errors="replace")
               for f in text_files(pathlib.Path(data.path))):
    cut = int(len(text) * (1 - data.val_fraction))
    documents.append(text[cut:] if split == "validation" else text[:cut])
  return documents


def _tfds_documents(split: str, data: ml_collections.ConfigDict) -> list[str]:
  feature = TFDS_TEXT_DATASETS[data.name]
  tfds_split = "test" if split == "validation" and data.name == "lm1b" else split
  source = tfds_source.data_source(data.name, tfds_split, data.tfds_dir)
  text = lambda value: value.decode("utf-8") if isinstance(value, bytes) else value  # mock: str
  return [text(source[i][feature]) for i in range(len(source))]


def documents(data: ml_collections.ConfigDict, split: str) -> list[str]:
  """The `split` ("train" or "validation") documents."""
  if data.source == "stdlib":
    return _stdlib_documents(split, data)
  if data.source == "text":
    return _text_documents(split, data)
  if data.source == "tfds":
    return _tfds_documents(split, data)
  if data.source == "hf":
    return hf.texts(data, split)
  raise ConfigError(f"data.source={data.source!r} is unknown; use {', '.join(TEXT_SOURCES)}")


TEXT_CHECK_BYTES = 1 << 20  # the head of each text file checked before training on it


def check_text_file(path: pathlib.Path) -> None:
  """A file trained on as text must be UTF-8 text: its head is checked, so a binary file or
  another encoding fails now instead of training on replacement characters."""
  with open(path, "rb") as f:
    head = f.read(TEXT_CHECK_BYTES)
  if b"\0" in head:
    raise ConfigError(f"{path} is binary (it holds NUL bytes), not text; point data.path at "
                      f"text files")
  try:
    codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < TEXT_CHECK_BYTES)
  except UnicodeDecodeError as e:
    raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, e.g. "
                      f"iconv -f latin1 -t utf-8") from None


def check_source(data: ml_collections.ConfigDict) -> None:
  """Fails before anything is compiled when the configured data cannot be found or read."""
  if data.source not in TEXT_SOURCES:
    raise ConfigError(f"data.source={data.source!r} is unknown; use {', '.join(TEXT_SOURCES)}")
  if data.source in ("text", "hf", "shards") and not data.mixture:
    if not data.path:
      raise ConfigError(f"data.source={data.source!r} needs --config.data.path")
    if not os.path.exists(data.path):
      raise ConfigError(f"data.path={data.path!r} does not exist")
  if data.source == "text" and not data.mixture:
    for path in text_files(pathlib.Path(data.path)):
      check_text_file(path)
  if data.mixture and data.source != "shards":
    raise ConfigError("data.mixture mixes prepared shard directories: set data.source='shards'")
  if data.source == "tfds":
    if data.name not in TFDS_TEXT_DATASETS:
      raise ConfigError(f"data.name={data.name!r} is not a known text dataset; use one of "
                        f"{', '.join(sorted(TFDS_TEXT_DATASETS))}")
    tfds_source.data_source(data.name, "train", data.tfds_dir)  # prepared, or a one-line error
  if data.source == "hf":
    hf.check(data)
  if (data.source == "shards" and data.tokenizer == "sentencepiece"
      and not os.path.exists(data.tokenizer_path)):
    raise ConfigError("data.source='shards' holds ids of the tokenizer it was prepared with: "
                      "point data.tokenizer_path at that model file")
