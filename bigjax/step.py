"""One train step: `train_step(state, batch) -> (state, metrics)`, jitted once by `build`.

The task returns sums (`Loss.total` over `Loss.weight`), so a batch split into microbatches adds
the sums and their gradients and divides once: gradient accumulation gives exactly the
full-batch gradient even when microbatches hold different numbers of real tokens.
"""

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax import adapt
from bigjax.adapt import prune
from bigjax.tasks.base import Loss, Phase, Task

# Purposes the root key is split into; folding a constant keeps each stream fixed by the seed.
PARAMS_STREAM, DROPOUT_STREAM, SAMPLE_STREAM = 0, 1, 2


def stream_key(seed, stream: int) -> jax.Array:
  """The key of one purpose, from the seed alone (the seed may be traced: ensemble members)."""
  return jax.random.fold_in(jax.random.key(seed), stream)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def global_norm(tree) -> jax.Array:
  """sqrt(sum of squares) of every element, scaled so it overflows only where an element is not
  finite: huge but finite parameters (a run diverging) still report a finite norm."""
  leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
  scale = jnp.where(scale == 0, 1.0, scale)
  return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


def summed_gradients(loss: Callable[..., Loss], params, batch, rng,
                     accum: int) -> tuple[Loss, Any]:
  """(the batch's Loss sums, the gradient of Loss.total), over `accum` microbatches.

  `loss(params, batch, rng) -> Loss` is a training loss (a phase's, with train=True).
  """

  def one(microbatch, key):
    grad_fn = jax.grad(lambda p: (lambda s: (s.total, s))(loss(p, microbatch, key)),
                       has_aux=True)
    grads, sums = grad_fn(params)
    return sums, grads

  if accum == 1:
    return one(batch, rng)
  # Microbatch j takes rows j, j+accum, ...: each device keeps its own rows, no data moves.
  micro = jax.tree.map(lambda x: x.reshape(-1, accum, *x.shape[1:]).swapaxes(0, 1), batch)

  def add_microbatch(total, j):
    out = one(jax.tree.map(lambda x: x[j], micro), jax.random.fold_in(rng, j))
    return jax.tree.map(jnp.add, total, out), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, first, rng))
  total, _ = jax.lax.scan(add_microbatch, zeros, jnp.arange(accum))
  return total


def mean_gradient(loss: Callable[..., Loss], params, batch, rng, step,
                  accum: int) -> tuple[dict[str, jax.Array], Any]:
  """The default `Task.gradients`: (the loss and the task's metrics, the gradient), all means
  over the batch: the sums of every microbatch divided once by their total weight."""
  del step  # the mean gradient is the same at every step
  sums, grad_sums = summed_gradients(loss, params, batch, rng, accum)
  weight = jnp.maximum(sums.weight.astype(jnp.float32), jnp.finfo(jnp.float32).tiny)
  scalars = {"loss": sums.total / weight, **{k: v / weight for k, v in sums.metrics.items()}}
  return scalars, jax.tree.map(lambda g: g / weight, grad_sums)


def skipped_updates(opt_state) -> jax.Array | None:
  """Updates dropped as non-finite so far (optax.apply_if_finite, one count per optimizer), or
  None when no optimizer skips them."""
  is_counter = lambda x: isinstance(x, optax.ApplyIfFiniteState)
  counters = [x for x in jax.tree.leaves(opt_state, is_leaf=is_counter) if is_counter(x)]
  return sum(c.total_notfinite for c in counters) if counters else None


def make_train_step(task: Task, tx, lr_schedule, config: ml_collections.ConfigDict):
  """train_step(state, batch) -> (state, metrics): the task's phases, one after the other.

  By default a task has one phase: every parameter, `task.loss`, the run's one optimizer (`tx`),
  maybe over microbatches. A task with several optimizers (`tx` an optim.GroupOptimizers) updates
  one parameter group per phase, with the parameters the earlier phases left. Each phase's
  gradient comes from `task.gradients` (default `mean_gradient`).

  Metrics: the loss and the task's own metrics, gradient, parameter and update norms (a run that
  is about to diverge shows it there first), the learning rate, and, when non-finite updates are
  skipped (optax.apply_if_finite), how many were; when pruning, sparsity. A named phase reports
  them as train/NAME/..., and train/loss is then the sum of the phases' losses. Frozen parameters
  (`adapt.trainable_split`) get no gradient and no update, and are left out of the norms.
  """
  gradients = task.gradients or functools.partial(
      mean_gradient, accum=config.optim.grad_accum_steps)
  split = adapt.trainable_split(config)

  def update(phase: Phase, step, params, frozen, opt_state, batch, rng):
    """One update of `phase`'s parameter group of the trainable `params`: (params, opt_state,
    metrics)."""
    group = phase.group
    own = params[group] if group else params
    loss = lambda p, b, r: phase.loss(adapt.merge({**params, group: p} if group else p, frozen),
                                      b, r, True)
    scalars, grads = gradients(loss, own, batch, rng, step)
    if group:
      updates, opt_state = tx.update_group(group, grads, opt_state, params)
      params = {**params, group: optax.apply_updates(own, updates)}
    else:
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    norms = {"grad_norm": global_norm(grads), "update_norm": global_norm(updates)}
    return params, opt_state, {**scalars, **norms}

  def repeated(phase: Phase, step, params, frozen, opt_state, batch, rng):
    """`phase.repeat` updates, update j on rows j, j+repeat, ...; metrics are their means."""
    if phase.repeat == 1:
      return update(phase, step, params, frozen, opt_state, batch, rng)
    rows = jax.tree.map(lambda x: x.reshape(-1, phase.repeat, *x.shape[1:]).swapaxes(0, 1), batch)

    def one(carry, j):
      params, opt_state, metrics = update(phase, step, carry[0], frozen, carry[1],
                                          jax.tree.map(lambda x: x[j], rows),
                                          jax.random.fold_in(rng, j))
      return (params, opt_state), metrics

    (params, opt_state), metrics = jax.lax.scan(one, (params, opt_state),
                                                jnp.arange(phase.repeat))
    return params, opt_state, jax.tree.map(jnp.mean, metrics)

  def train_step(state: TrainState, batch, seed=config.seed):
    """`seed` is config.seed; an ensemble's vmapped step passes each member's own."""
    # A resumed run draws the same dropout: the key depends on the seed and the step alone.
    rng = jax.random.fold_in(stream_key(seed, DROPOUT_STREAM), state.step)
    (params, frozen), opt_state, metrics = split(state.params), state.opt_state, {}
    for i, phase in enumerate(task.phases):
      params, opt_state, phase_metrics = repeated(phase, state.step, params, frozen, opt_state,
                                                  batch, jax.random.fold_in(rng, i) if i else rng)
      prefix = f"train/{phase.name}/" if phase.name else "train/"
      metrics |= {prefix + k: v for k, v in phase_metrics.items()}
      schedule = lr_schedule[phase.group] if phase.group else lr_schedule
      metrics[prefix + "lr"] = schedule(state.step * phase.repeat)
    if "train/loss" not in metrics:
      metrics["train/loss"] = sum(metrics[f"train/{p.name}/loss"] for p in task.phases)
    metrics["train/param_norm"] = global_norm(params)
    skipped = skipped_updates(opt_state)
    if skipped is not None:
      metrics["train/skipped_steps"] = skipped
    metrics |= prune.sparsity_metrics(opt_state)
    params = adapt.merge(params, frozen)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
