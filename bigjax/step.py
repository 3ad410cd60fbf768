"""One optimizer update: `train_step(state, batch) -> (state, metrics)`, jitted once by `build`.

The task returns sums (`Loss.total` over `Loss.weight`), so a batch split into microbatches adds
the sums and their gradients and divides once: gradient accumulation gives exactly the
full-batch gradient even when microbatches hold different numbers of real tokens.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax import adapt
from bigjax.adapt import prune
from bigjax.tasks.base import Loss, Task

# Purposes the root key is split into; folding a constant keeps each stream fixed by the seed.
PARAMS_STREAM, DROPOUT_STREAM, SAMPLE_STREAM = 0, 1, 2


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


def summed_gradients(task: Task, params, batch, rng, accum: int) -> tuple[Loss, Any]:
  """(the batch's Loss sums, the gradient of Loss.total), over `accum` microbatches."""

  def one(microbatch, key):
    grad_fn = jax.grad(lambda p: (lambda s: (s.total, s))(task.loss(p, microbatch, key, True)),
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


def make_train_step(task: Task, tx: optax.GradientTransformation, lr_schedule,
                    config: ml_collections.ConfigDict):
  """train_step(state, batch) -> (state, metrics): one update, maybe over microbatches.

  Metrics: the loss and the task's own metrics, gradient, parameter and update norms (a run that
  is about to diverge shows it there first), the learning rate, and, when non-finite updates are
  skipped (`tx` wrapped last in optax.apply_if_finite), how many were; when pruning, sparsity.
  Frozen parameters (`adapt.trainable_split`) get no gradient and no update, and are left out of
  the norms.
  """
  accum = config.optim.grad_accum_steps
  split = adapt.trainable_split(config)
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), DROPOUT_STREAM)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(dropout_key, state.step)  # a resumed run draws the same dropout
    trainable, frozen = split(state.params)
    sums, grad_sums = summed_gradients(adapt.with_frozen(task, frozen), trainable, batch, rng,
                                       accum)
    weight = jnp.maximum(sums.weight.astype(jnp.float32), jnp.finfo(jnp.float32).tiny)
    grads = jax.tree.map(lambda g: g / weight, grad_sums)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {"train/loss": sums.total / weight, "train/grad_norm": global_norm(grads),
               "train/param_norm": global_norm(trainable),
               "train/update_norm": global_norm(updates), "train/lr": lr_schedule(state.step),
               **{f"train/{k}": v / weight for k, v in sums.metrics.items()}}
    if isinstance(opt_state, optax.ApplyIfFiniteState):
      metrics["train/skipped_steps"] = opt_state.total_notfinite
    metrics |= prune.sparsity_metrics(opt_state)
    params = adapt.merge(trainable, frozen)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
