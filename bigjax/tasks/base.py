"""The contract between a task and the one loop: everything `bigjax.train` calls, and nothing else.

A task owns an objective: its model, its data, its loss and its evaluation. The loop owns
everything around it (mesh, optimizer, sharding, checkpoints, tracking) and never looks inside a
task beyond the methods below. Adding a model family means writing a `Task` subclass and adding
it to `bigjax.tasks.TASKS`.

Shapes: the loop asks `batch_spec(batch_size)` for the global batch, calls `loss` and
`eval_sums` on (sharded) global batches inside jit, and hands `train_data`/`eval_data` the
*local* batch size (rows this process reads). Everything a task returns from a jitted method is a
sum over the batch's rows, so batches add up exactly whatever the batch size, the number of
microbatches, the padding or the devices.
"""

import abc
import dataclasses
from typing import Any, Iterable, NamedTuple, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from bigjax.models.layers import TransformerConfig

Batch = dict[str, Any]  # name -> array; leading axis is the batch


class Loss(NamedTuple):
  """Sums over one batch: the loss is `total / weight`, each metric `metrics[k] / weight`.

  `weight` is what the sum runs over (real tokens, examples, example weights), so gradient
  accumulation adds `total` and `weight` over microbatches and divides once: exact whatever each
  microbatch's own count of real tokens.
  """

  total: jax.Array
  weight: jax.Array
  metrics: dict[str, jax.Array] = {}


@dataclasses.dataclass
class Report:
  """What a task hands back to be logged: numbers, pictures (HxWxC uint8) and text, apart."""

  scalars: dict[str, float] = dataclasses.field(default_factory=dict)
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  texts: dict[str, str] = dataclasses.field(default_factory=dict)


class DataIterator(Protocol):
  """A training iterator the loop can checkpoint: grain's DatasetIterator is one."""

  def __next__(self) -> Batch: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...


class TrainData(Protocol):
  def __iter__(self) -> DataIterator: ...


def dropout_rngs(rng: jax.Array | None) -> dict[str, jax.Array]:
  """`rngs=` for `model.apply`: training passes a key, evaluation none (dropout is off)."""
  return {} if rng is None else {"dropout": rng}


class Task(abc.ABC):
  """One objective. Subclasses set `model` and implement every abstract method.

  Construction validates the task's own settings and raises `ConfigError` with one line; it may
  read small data (a split of scikit-learn digits) but must not compile anything.
  """

  model: nn.Module
  # What throughput counts: ("tokens", tokens per example) or ("examples", 1).
  throughput_unit: tuple[str, int]
  # Names `eval_summary` reports (without the "eval/" prefix); early_stop.metric is checked
  # against them before anything compiles.
  metric_names: tuple[str, ...]
  tokenizer = None  # text tasks: encode(str) -> ids, decode(ids) -> str

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    self.config = config
    self.process_index, self.process_count = process_index, process_count

  def check_mesh(self, mesh_shape: dict[str, int]) -> None:
    """Fails with one line when the model cannot be laid out on this mesh (default: it can)."""
    del mesh_shape

  @abc.abstractmethod
  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a batch of `batch_size` rows."""

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch) -> dict:
    """`model.init` on a (dummy) batch: {"params": boxed parameters with logical axis names}."""

  @abc.abstractmethod
  def loss(self, params, batch: Batch, rng: jax.Array, train: bool) -> Loss:
    """Summed training loss of one batch (jitted; `rng` seeds dropout and sampling)."""

  @abc.abstractmethod
  def eval_sums(self, params, batch: Batch) -> dict[str, jax.Array]:
    """Sufficient statistics of one eval batch (jitted); the loop adds them over batches."""

  @abc.abstractmethod
  def eval_summary(self, sums: dict[str, np.ndarray]) -> Report:
    """The totals of `eval_sums` over all eval batches -> metrics named in `metric_names`."""

  @abc.abstractmethod
  def train_data(self, local_batch: int, seed: int) -> TrainData:
    """Endless training batches of this process's rows; its iterator is checkpointed."""

  @abc.abstractmethod
  def eval_data(self, local_batch: int, num_batches: int) -> Iterable[Batch]:
    """The same evaluation batches every time (a task may cover its whole split instead of
    `num_batches`); every process yields the same number of batches."""

  @abc.abstractmethod
  def flops_per_example(self, params) -> float:
    """Training FLOPs (forward and backward) of one example, for MFU."""

  def finish(self, params, rng: jax.Array) -> Report:
    """What the run ends with besides metrics: a text sample, image grids (default: nothing)."""
    del params, rng
    return Report()


class TransformerTask(Task):
  """A task whose model is a Transformer of `model_cfg`: its heads and MLP split over the mesh."""

  model_cfg: TransformerConfig

  def check_mesh(self, mesh_shape: dict[str, int]) -> None:
    self.model_cfg.check_mesh(mesh_shape)
