"""Fixed-size examples (images with labels, feature vectors with targets) through grain.

Sources (`data.source` / `data.name`):
  sklearn / digits    8x8 grey digits, 1797 of them, shipped with scikit-learn (no download);
  sklearn / diabetes  10 standardized features and a disease-progression target, 442 patients;
  tfds / mnist, fashion_mnist   28x28 grey images, read with `tfds.data_source` (array_record,
                      no TensorFlow) once prepared in `data.tfds_dir` (bigjax/data/tfds_source.py).
scikit-learn's sets have no test split: a stratified (digits) or plain (diabetes) split, fixed by
a constant seed, holds out `data.val_fraction` of the examples, the same on every machine.

Every example is a dict of arrays with a `weight` of 1. Training batches go through the one
pipeline (bigjax.data.pipeline): shuffled anew every epoch, each process reading its rows of
every global batch. Evaluation covers the whole test split, each process every P-th example: the
last batch is filled with weight-0 padding rows, so every test example counts exactly once.
"""

from typing import Iterator

import grain
import ml_collections
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import tfds_source

# source -> dataset name -> number of classes (0 for a regression target).
DATASETS = {
    "sklearn": {"digits": 10, "diabetes": 0},
    "tfds": {"mnist": 10, "fashion_mnist": 10},
}
SPLIT_SEED = 0  # scikit-learn's sets: the held-out split never changes with config.seed


def check_source(data: ml_collections.ConfigDict, kind: str) -> int:
  """The number of classes of the configured dataset (0 for regression); fails clearly if the
  source is unknown or holds the wrong `kind` of target ("classes" or "target")."""
  names = DATASETS.get(data.source)
  if names is None or data.name not in names:
    known = ", ".join(f"{s}/{n}" for s, ns in DATASETS.items() for n in ns)
    raise ConfigError(f"data.source={data.source!r}, data.name={data.name!r} is not an array "
                      f"dataset; use one of {known} (source/name)")
  num_classes = names[data.name]
  if (kind == "classes") != (num_classes > 0):
    fitting = [f"{s}/{n}" for s, ns in DATASETS.items() for n, c in ns.items()
               if (c > 0) == (kind == "classes")]
    raise ConfigError(f"data.name={data.name!r} has no {kind} for this task; use one of "
                      f"{', '.join(fitting)}")
  return num_classes


class ArrayExamples:
  """Random access to rows of equally long arrays: item i is {name: array[i]}, plus a weight."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {**{k: v[i] for k, v in self.arrays.items()}, "weight": np.float32(1)}


def _sklearn(name: str, split: str, val_fraction: float) -> ArrayExamples:
  from sklearn import datasets, model_selection

  if name == "digits":
    x, y = datasets.load_digits(return_X_y=True)
    # Pixels are 0..16 counts of ink; images are BxHxWxC like every other image in bigjax.
    arrays = {"image": (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32),
              "label": y.astype(np.int32)}
    stratify = y
  else:
    x, y = datasets.load_diabetes(return_X_y=True)
    arrays = {"features": x.astype(np.float32), "target": y.astype(np.float32)}
    stratify = None
  index = np.arange(len(y))
  train, test = model_selection.train_test_split(index, test_size=val_fraction,
                                                 random_state=SPLIT_SEED, stratify=stratify)
  rows = np.sort(train if split == "train" else test)
  return ArrayExamples({k: v[rows] for k, v in arrays.items()})


def _tfds_image(record) -> dict[str, np.ndarray]:
  return {"image": record["image"].astype(np.float32) / 255.0,
          "label": np.int32(record["label"]), "weight": np.float32(1)}


def examples(data: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
  """All examples of `split` ("train" or "test"), every process's share included."""
  if data.source == "sklearn":
    return grain.MapDataset.source(_sklearn(data.name, split, data.val_fraction))
  source = tfds_source.data_source(data.name, split, data.tfds_dir)
  return grain.MapDataset.source(source).map(_tfds_image)


def eval_batches(ds: grain.MapDataset, local_batch: int, process_index: int,
                 process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the whole split, in order, padded with weight-0 rows.

  Every process yields the same number of batches (the eval step is a collective), so a
  process with a shorter share pads more.
  """
  share = ds[process_index::process_count]
  longest_share = -(-len(ds) // process_count)
  num_batches = -(-longest_share // local_batch)
  padding = {k: np.zeros_like(v) for k, v in ds[0].items()}  # weight 0: counts nowhere
  for b in range(num_batches):
    rows = [share[i] if i < len(share) else padding
            for i in range(b * local_batch, (b + 1) * local_batch)]
    yield {k: np.stack([row[k] for row in rows]) for k in rows[0]}
