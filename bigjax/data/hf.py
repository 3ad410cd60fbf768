"""Local Hugging Face datasets, read through the `datasets` library: offline, nothing downloaded.

`data.path` is a directory written by `save_to_disk` (`datasets.load_from_disk`), or local JSONL,
JSON or Parquet files (one file, or a directory of them) that `datasets.load_dataset` reads
into its Arrow cache. Rows are read by index from the memory-mapped Arrow table, so grain asks
for a row only when its batch is built (chat fine-tuning reads conversations this way); a
language model packs the `data.field` column of its split into one token stream (as the other
in-memory sources do; `bigjax.data.prepare` is the way for corpora larger than memory).

Splits: the dataset's own "validation" (or else "test") split when it has one, with "train" for
training; otherwise the last `data.val_fraction` of the rows is held out.
"""

import functools
import glob
import os

import ml_collections

from bigjax.config_checks import ConfigError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
HELD_OUT = ("validation", "test")


def _data_files(path: str) -> list[str]:
  if os.path.isdir(path):
    return sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                  if os.path.splitext(f)[1] in BUILDERS)
  return [path] if os.path.splitext(path)[1] in BUILDERS else []


def _load(path: str):
  """The dataset at `path`: a Dataset or a DatasetDict of splits."""
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is first imported
  import datasets

  if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
      os.path.join(path, "state.json")):
    return datasets.load_from_disk(path)
  files = _data_files(path)
  builders = {BUILDERS[os.path.splitext(f)[1]] for f in files}
  if len(builders) != 1:
    raise ConfigError(f"data.path={path!r} is neither a save_to_disk directory nor JSONL, JSON or "
                      f"Parquet files of one kind")
  return datasets.load_dataset(builders.pop(), data_files=files)


@functools.cache
def training_rows(path: str):
  """The dataset at `path`, its "train" split if it has splits: what `prepare --format=hf`
  tokenizes (opened once per process; the Arrow table is memory-mapped, not read)."""
  import datasets

  loaded = _load(path)
  if isinstance(loaded, datasets.DatasetDict):
    return loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
  return loaded


def rows(data: ml_collections.ConfigDict, split: str):
  """The `split` ("train" or "validation") rows, as a `datasets.Dataset` (random access)."""
  import datasets

  loaded = _load(data.path)
  if isinstance(loaded, datasets.DatasetDict):
    held_out = next((name for name in HELD_OUT if name in loaded), None)
    if held_out:
      if split == "validation":
        return loaded[held_out]
      if "train" in loaded:
        return loaded["train"]
    loaded = loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
  cut = int(len(loaded) * (1 - data.val_fraction))
  return loaded.select(range(cut) if split == "train" else range(cut, len(loaded)))


def check(data: ml_collections.ConfigDict) -> None:
  """Fails clearly when the dataset cannot be opened or lacks the `data.field` column."""
  train = rows(data, "train")
  if data.field not in train.column_names:
    raise ConfigError(f"data.path={data.path!r} has no column {data.field!r} (columns: "
                      f"{', '.join(train.column_names)}); set data.field")
  if not len(train):
    raise ConfigError(f"data.path={data.path!r} holds no training rows")


def texts(data: ml_collections.ConfigDict, split: str) -> list[str]:
  """The `data.field` column of the split: a language model's documents."""
  return list(rows(data, split)[data.field])
