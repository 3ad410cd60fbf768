"""config + devices -> everything a run needs: the one place a run is assembled.

    run = build.build(config)             # checks, mesh, task, optimizer, state layout
    programs = run.compile()             # init, train step and eval step, compiled concurrently
    state = run.fresh_state(programs)    # or checkpoint.restore(run.abstract)

The training loop, `scripts/bench.py`, `scripts/aot_compile.py`, `bigjax.load`, the evaluate and
serve commands and the tests all call `build`, so they compile the same program: same optimizer
wrapping (freeze, non-finite skipping), same shardings, same donation.
"""

import concurrent.futures
import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax import adapt, finetune, methods, optim, sharding
from bigjax.adapt import prune
from bigjax.config_checks import ConfigError, check_config
from bigjax.methods import ensemble
from bigjax.step import PARAMS_STREAM, TrainState, make_train_step, stream_key
from bigjax.tasks import TASKS
from bigjax.tasks.base import Task


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in `directory`: a rerun of an unchanged config loads them instead of
  compiling (the README's throughput section has the time to first step, cold and warm)."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    # JAX skips programs that compile in under a second by default: the initialiser and the
    # eval step of a small model are among them, and a warm start would compile them again.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@contextlib.contextmanager
def tracing_context(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict):
  """The mesh's shape and the logical-axis rules, for tracing the model's sharding constraints.

  Only the abstract mesh: the few concrete values made while tracing (PRNG keys) stay on the
  host's default device, which also lets a CPU machine compile for compile-only TPU devices.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
       nn.logical_axis_rules(sharding.rules(config)):
    yield


def make_task(config: ml_collections.ConfigDict, mesh_shape: dict[str, int] | None = None) -> Task:
  """The task `config.task` names, with its own settings checked (and its layout on the mesh),
  inside the training methods the config turns on (bigjax.methods: ensembles, DP-SGD, ...)."""
  if config.task not in TASKS:
    raise ConfigError(f"task={config.task!r} is unknown; use one of {', '.join(TASKS)}")
  task = TASKS[config.task](config, jax.process_index(), jax.process_count())
  task = methods.wrap(task, config)
  if mesh_shape is not None:
    task.check_mesh(mesh_shape)
  metric = config.early_stop.metric
  reported = [f"eval/{name}" for name in task.metric_names]
  if metric and metric not in reported:
    raise ConfigError(f"early_stop.metric={metric!r} is not reported by task {config.task}; use "
                      f"one of {', '.join(reported)}")
  return task


def make_tx(config: ml_collections.ConfigDict, optim_config=None, updates: int = 0):
  """(optimizer, schedule): optim's optimizer, frozen parameters masked, pruning masks (applied
  after every update), non-finite skipping.

  `optim_config` and `updates` (what the schedule spans) default to config.optim and
  config.steps; a task's parameter groups pass their own.
  apply_if_finite wraps last, so its state is the outermost and the step can report its count.
  """
  tx, lr_schedule = optim.make_optimizer(optim_config or config.optim, updates or config.steps)
  tx = finetune.freeze(tx, config.freeze)
  tx = prune.masked(tx, config)
  if config.on_nonfinite == "skip":
    # Keeps params and optimizer state unchanged on a step whose gradients are not finite; past
    # the limit the update is applied, and the loop stops on the non-finite parameters.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=config.max_consecutive_skips)
  return tx, lr_schedule


def make_optimizers(task: Task, config: ml_collections.ConfigDict):
  """(optimizer, schedule) of the run: make_tx's, or with a task whose phases name parameter
  groups, one make_tx optimizer per group (optim.GroupOptimizers) and {group: schedule}."""
  groups = {phase.group: phase for phase in task.phases if phase.group}
  if not groups:
    return make_tx(config)
  made = {}
  for group, phase in groups.items():
    settings = ml_collections.ConfigDict(config.optim.to_dict())
    settings.update(phase.optim)
    made[group] = make_tx(config, settings, config.steps * phase.repeat)
  return (optim.GroupOptimizers.over({g: tx for g, (tx, _) in made.items()}),
          {g: schedule for g, (_, schedule) in made.items()})


def state_layout(task: Task, tx, config, mesh) -> tuple[TrainState, TrainState, Callable]:
  """(abstract state with shardings, state shardings, init function), without allocating.

  Parameter shardings come from the logical axis names the modules attach; optimizer moments
  take the sharding of their parameter, and everything else (counters, factored statistics) is
  replicated. The model is traced once, for its boxed shapes. The optimizer sees the trainable
  parameters only (`adapt.trainable_split`: a LoRA run's adapters).
  """
  trainable = lambda params: adapt.trainable_split(config)(params)[0]
  def init_params(rng):
    # An eval batch is a plain one: a method's training batches may add axes (clients, members).
    dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in task.eval_batch_spec(1).items()}
    return task.init(rng, dummy)["params"]

  boxed = jax.eval_shape(init_params, jax.random.key(0))
  param_shardings = sharding.logical_shardings(boxed, mesh, config)
  abstract_params = jax.tree.map(lambda box: box.unbox(apply_constraint=False), boxed,
                                 is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  abstract_opt = jax.eval_shape(tx.init, trainable(abstract_params))
  def moment_sharding(leaf, param, param_sharding):
    if isinstance(leaf, optax.MaskedNode):  # a parameter this optimizer does not update
      return leaf
    return param_sharding if leaf.shape == param.shape else sharding.replicated(mesh)

  opt_shardings = optax.tree_map_params(
      tx, moment_sharding, abstract_opt, trainable(abstract_params), trainable(param_shardings),
      transform_non_params=lambda _: sharding.replicated(mesh),
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                        opt_state=abstract_opt)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)

  def init(seed):
    params = nn.meta.unbox(init_params(stream_key(seed, PARAMS_STREAM)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(trainable(params)))

  if task.members > 1:  # an ensemble: every member's state, stacked
    return ensemble.stacked_layout(abstract, shardings, init, task.members, mesh)
  return abstract, shardings, init


@dataclasses.dataclass(frozen=True)
class Programs:
  """The compiled programs of a run. `eval_step` may still be compiling: `.result()` waits."""

  init: Any  # seed -> TrainState, created directly in its sharded layout
  train_step: Any  # (state, batch) -> (state, metrics); the state is donated
  eval_step: concurrent.futures.Future  # (params, batch) -> eval sums
  compile_seconds: float


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run is, before any array exists: config, mesh, task, optimizer, layouts."""

  config: ml_collections.ConfigDict
  devices: list
  mesh_shape: dict[str, int]
  mesh: jax.sharding.Mesh
  task: Task
  tx: Any  # an optax.GradientTransformation, or optim.GroupOptimizers (several, by parameter group)
  lr_schedule: Any  # its optax.Schedule, or {group: schedule}
  abstract: TrainState  # ShapeDtypeStructs carrying their shardings
  shardings: TrainState
  init_fn: Callable

  def activate(self):
    """The mesh and logical-axis rules that tracing the model needs."""
    return tracing_context(self.mesh, self.config)

  @property
  def local_batch_size(self) -> int:
    """Rows of the global batch this process reads."""
    return self.config.batch_size // jax.process_count()

  @property
  def batch_sharding(self):
    return sharding.batch_sharding(self.mesh)

  def abstract_batch(self, training: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    """A training (or evaluation) batch with its sharding."""
    spec = self.task.batch_spec if training else self.task.eval_batch_spec
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
            for k, v in spec(self.config.batch_size).items()}

  def global_batch(self, local_batch: dict) -> dict[str, jax.Array]:
    return sharding.global_batch(local_batch, self.mesh)

  def lower_train_step(self):
    train_step = make_train_step(self.task, self.tx, self.lr_schedule, self.config)
    if self.task.members > 1:
      train_step = ensemble.vmapped_train_step(train_step, self.task.members, self.config.seed)
    step = jax.jit(train_step, in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0)
    with self.activate():
      return step.lower(self.abstract, self.abstract_batch())

  def lower_eval_step(self):
    step = jax.jit(self.task.eval_sums, in_shardings=(self.shardings.params, self.batch_sharding),
                   out_shardings=sharding.replicated(self.mesh))
    with self.activate():
      return step.lower(self.abstract.params, self.abstract_batch(training=False))

  def lower_init(self):
    with self.activate():
      seed = jax.ShapeDtypeStruct((), jnp.int32)
      return jax.jit(self.init_fn, out_shardings=self.shardings).lower(seed)

  def compile(self, init: bool = True) -> Programs:
    """Lowers init, train and eval steps (Python, one at a time), then compiles them at once:
    XLA compiles outside the GIL, so the three overlap. The eval step finishes in the background
    while training starts."""
    start = time.perf_counter()
    lowered = [self.lower_train_step(), self.lower_eval_step()]
    lowered += [self.lower_init()] if init else []
    pool = concurrent.futures.ThreadPoolExecutor(len(lowered), thread_name_prefix="compile")
    futures = [pool.submit(program.compile) for program in lowered]
    pool.shutdown(wait=False)
    train_step = futures[0].result()
    init_program = futures[2].result() if init else None
    return Programs(init=init_program, train_step=train_step, eval_step=futures[1],
                    compile_seconds=time.perf_counter() - start)

  def fresh_state(self, programs: Programs) -> TrainState:
    """Step 0: initialised from the seed in its sharded layout, then `init_from`'s parameters
    (and a distillation teacher's)."""
    state = programs.init(jnp.int32(self.config.seed))
    return state.replace(params=adapt.load_pretrained(state.params, self.abstract.params,
                                                      self.config, self.task))

  def checkpointed(self, state: TrainState) -> TrainState:
    """What a checkpoint holds of `state` (or of `abstract`): all of it, but for a LoRA run's
    base, which its config refers to instead."""
    return adapt.checkpointed(state, self.config)

  @property
  def saves_everything(self) -> bool:
    """Whether a checkpoint is the whole state (else resuming needs the initialiser)."""
    return self.checkpointed(self.abstract) is self.abstract

  def resumed(self, programs: Programs, saved: TrainState) -> TrainState:
    """The whole state a checkpoint's `checkpointed` part stands for (a LoRA base rebuilt)."""
    if self.saves_everything:
      return saved
    base = adapt.trainable_split(self.config)(self.fresh_state(programs).params)[1]
    return saved.replace(params=adapt.merge(saved.params, base))

  @property
  def num_params(self) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract.params))

  @property
  def num_trainable(self) -> int:
    trainable = adapt.trainable_split(self.config)(self.abstract.params)[0]
    return sum(math.prod(x.shape) for x in jax.tree.leaves(trainable))

  @property
  def flops_per_step(self) -> float:
    return self.task.flops_per_example(self.abstract.params) * self.config.batch_size

  @property
  def units_per_step(self) -> tuple[str, int]:
    """("tokens", tokens per step) or ("examples", examples per step): what throughput counts."""
    unit, per_example = self.task.throughput_unit
    return unit, self.config.batch_size * per_example


def build(config: ml_collections.ConfigDict, devices=None) -> Run:
  """Checks `config` against the devices, then lays out the run without allocating anything.

  `devices` restricts the run to a subset (tests compare 1 and 8 devices in one process).
  """
  devices = list(devices if devices is not None else jax.devices())
  mesh_shape = check_config(config, len(devices), jax.process_count())
  use_compilation_cache(config.compilation_cache_dir)
  task = make_task(config, mesh_shape)
  adapt.adapt_task(task, config, devices[0].platform)  # LoRA or quantization wrap task.model
  tx, lr_schedule = make_optimizers(task, config)
  mesh = sharding.make_mesh(mesh_shape, devices)
  with tracing_context(mesh, config):
    abstract, shardings, init_fn = state_layout(task, tx, config, mesh)
  return Run(config=config, devices=devices, mesh_shape=mesh_shape, mesh=mesh, task=task, tx=tx,
             lr_schedule=lr_schedule, abstract=abstract, shardings=shardings, init_fn=init_fn)
