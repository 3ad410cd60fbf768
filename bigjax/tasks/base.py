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
from typing import Any, Callable, Iterable, NamedTuple, Protocol

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


@dataclasses.dataclass(frozen=True)
class Phase:
  """One optimizer update inside a train step.

  The gradient of `loss` (the task's `loss` signature, over the whole parameter tree) with respect
  to the parameter group `group` alone, applied by that group's own optimizer: `config.optim` with
  `optim` overriding some of its keys (e.g. {"lr": 2e-4}). `group` is a top-level key of the
  parameters; "" means every parameter and the run's one optimizer. A phase is applied `repeat`
  times in a row, update i on batch rows i, i + repeat, ... (so the batch divides by `repeat`).
  """

  name: str  # its metrics are train/NAME/... ("" for the single default phase: train/...)
  loss: Callable[..., "Loss"]
  group: str = ""
  repeat: int = 1
  optim: dict = dataclasses.field(default_factory=dict)


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

  # How the train step updates the parameters: hooks with defaults, which a task with several
  # optimizers (a GAN) or a training method wrapping a task (bigjax.methods) overrides.
  #
  # `gradients(loss, params, batch, rng, step) -> (scalars, gradient)`: how a phase's training
  # loss (`loss(params, batch, rng) -> Loss`) becomes the gradient its optimizer applies, with the
  # scalars logged as train/NAME. None: the gradient of the batch's mean loss
  # (bigjax.step.mean_gradient). DP-SGD clips and noises per-example gradients; federated
  # averaging runs a round of client training instead.
  gradients: Callable | None = None
  # Models trained side by side in one step (an ensemble): the state and the training batches
  # gain a member axis, and build vmaps init and the train step over it; member k is exactly the
  # run with seed + k.
  members: int = 1

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

  def eval_batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of an evaluation batch: those of a training batch unless a method reshapes training
    batches (a federated round holds many clients' data; evaluation reads plain batches)."""
    return self.batch_spec(batch_size)

  @property
  def phases(self) -> tuple[Phase, ...]:
    """The updates of one train step, in order; by default one: every parameter, `loss`, the
    run's optimizer."""
    return (Phase("", self.loss),)

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


class TaskWrapper(Task):
  """A training method around a task: every part of the contract is the inner task's unless the
  method overrides it, and other attributes (model, model_cfg, ...) read through to it.

  A method that changes the training loss (augmentation, adversarial examples) overrides
  `transform_loss`, and so changes the loss of every phase (both of a GAN's, say).
  """

  def __init__(self, inner: Task):
    super().__init__(inner.config, inner.process_index, inner.process_count)
    self.inner = inner

  def __getattr__(self, name):
    if name == "inner":  # not set yet (copying, unpickling): never recurse
      raise AttributeError(name)
    return getattr(self.inner, name)

  @property
  def model(self):
    return self.inner.model

  @property
  def throughput_unit(self):
    return self.inner.throughput_unit

  @property
  def metric_names(self):
    return self.inner.metric_names

  @property
  def tokenizer(self):
    return self.inner.tokenizer

  @property
  def gradients(self):
    return self.inner.gradients

  @property
  def members(self):
    return self.inner.members

  def transform_loss(self, loss: Callable[..., Loss]) -> Callable[..., Loss]:
    return loss

  @property
  def phases(self):
    return tuple(dataclasses.replace(p, loss=self.transform_loss(p.loss))
                 for p in self.inner.phases)

  def check_mesh(self, mesh_shape):
    self.inner.check_mesh(mesh_shape)

  def batch_spec(self, batch_size):
    return self.inner.batch_spec(batch_size)

  def eval_batch_spec(self, batch_size):
    return self.inner.eval_batch_spec(batch_size)

  def init(self, rng, batch):
    return self.inner.init(rng, batch)

  def loss(self, params, batch, rng, train):
    return self.transform_loss(self.inner.loss)(params, batch, rng, train)

  def eval_sums(self, params, batch):
    return self.inner.eval_sums(params, batch)

  def eval_summary(self, sums):
    return self.inner.eval_summary(sums)

  def train_data(self, local_batch, seed):
    return self.inner.train_data(local_batch, seed)

  def eval_data(self, local_batch, num_batches):
    return self.inner.eval_data(local_batch, num_batches)

  def flops_per_example(self, params):
    return self.inner.flops_per_example(params)

  def finish(self, params, rng):
    return self.inner.finish(params, rng)
