"""Where documents come from: Python's own sources, text files, or tfds.

A source returns the documents of one split that one process reads: each process reads only its
share (every P-th document, or the P-th slice of a single long document), so no two processes
train on the same text and no process reads what it does not use.
"""

import codecs
import os
import pathlib
import sysconfig
import zlib
from typing import Sequence

import ml_collections

from bigjax.config_checks import ConfigError
from bigjax.data import tfds_source

TFDS_TEXT_DATASETS = {"tiny_shakespeare": "text", "lm1b": "text"}  # name -> text feature


def stdlib_files() -> list[pathlib.Path]:
  """The Python standard library's .py files, sorted, without site-packages."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def is_validation(name: str, val_fraction: float) -> bool:
  """Stable split by name hash: a file stays in its split whatever else is added or removed."""
  return zlib.crc32(name.encode()) % 10_000 < val_fraction * 10_000


def process_share(documents: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """Every P-th document; a corpus with fewer documents than processes is cut into P slices."""
  if process_count == 1:
    return list(documents)
  if len(documents) >= process_count:
    return list(documents[process_index::process_count])
  shares = []
  for doc in documents:
    size = -(-len(doc) // process_count)
    shares.append(doc[process_index * size:(process_index + 1) * size])
  return shares


def _stdlib_documents(split: str, data: ml_collections.ConfigDict, share) -> list[str]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = [f for f in stdlib_files()
           if is_validation(str(f.relative_to(root)), data.val_fraction) == (split == "validation")]
  return [f.read_text(encoding="utf-8", errors="replace") for f in share(files)]


def text_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The file `path`, or every file under the directory `path`, sorted."""
  return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _text_documents(split: str, data: ml_collections.ConfigDict, share) -> list[str]:
  """Each file's last `val_fraction` of characters is validation, as nanoGPT splits its text."""
  documents = []
  for text in (f.read_text(encoding="utf-8", errors="replace")
               for f in text_files(pathlib.Path(data.path))):
    cut = int(len(text) * (1 - data.val_fraction))
    documents.append(text[cut:] if split == "validation" else text[:cut])
  return share(documents)


def _tfds_documents(split: str, data: ml_collections.ConfigDict, share,
                    process_count: int) -> list[str]:
  feature = TFDS_TEXT_DATASETS[data.name]
  tfds_split = "test" if split == "validation" and data.name == "lm1b" else split
  source = tfds_source.data_source(data.name, tfds_split, data.tfds_dir)

  def decode(record) -> str:
    text = record[feature]  # bytes as stored; tfds.testing.mock_data hands out str
    return text.decode("utf-8") if isinstance(text, bytes) else text

  indices = list(range(len(source)))
  if len(indices) < process_count:  # e.g. tiny_shakespeare: one record per split
    return share([decode(source[i]) for i in indices])
  return [decode(source[i]) for i in share(indices)]


def documents(data: ml_collections.ConfigDict, split: str, process_index: int = 0,
              process_count: int = 1) -> list[str]:
  """The `split` ("train" or "validation") documents this process reads."""
  share = lambda docs: process_share(docs, process_index, process_count)
  if data.source == "stdlib":
    return _stdlib_documents(split, data, share)
  if data.source == "text":
    return _text_documents(split, data, share)
  if data.source == "tfds":
    return _tfds_documents(split, data, share, process_count)
  raise ConfigError(f"data.source={data.source!r} is unknown; use stdlib, text or tfds")


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
  if data.source == "text":
    if not data.path:
      raise ConfigError("data.source='text' needs --config.data.path=FILE_OR_DIR")
    if not os.path.exists(data.path):
      raise ConfigError(f"data.path={data.path!r} does not exist; point it at a text file or dir")
    for path in text_files(pathlib.Path(data.path)):
      check_text_file(path)
  elif data.source == "tfds":
    if data.name not in TFDS_TEXT_DATASETS:
      raise ConfigError(f"data.name={data.name!r} is not a known text dataset; use one of "
                        f"{', '.join(sorted(TFDS_TEXT_DATASETS))}")
    tfds_source.data_source(data.name, "train", data.tfds_dir)  # prepared, or a one-line error
  elif data.source != "stdlib":
    raise ConfigError(f"data.source={data.source!r} is unknown; use stdlib, text or tfds")
