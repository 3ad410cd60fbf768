"""Magnitude pruning: unstructured or 2:4, gradual (Zhu & Gupta, 2017) or one-shot.

Every dense kernel is pruned layer by layer to the schedule's sparsity s(t). Gradual pruning ramps
s(t) = s_final * (1 - (1 - progress)^3) from `begin_step` to `end_step`, moving every `every`
steps, so most weights go early while the network can still recover, and few at the end.

The masks live in the optimizer state (they checkpoint, shard and resume with it) and are applied
to every update, weight decay included: a pruned weight gets the update -w and stays exactly 0.
A mask is recomputed only when the schedule's count for its layer changes: the smallest |w| go,
and a weight once pruned ranks below every kept one, so masks only ever grow.

2:4 keeps 2 of every 4 consecutive weights along a kernel's first input axis (for each output
and, in attention's output projection, each head dim): at most the two smallest of each group may
be pruned, and at s = 0.5 exactly those are. Any grouping along a contracted axis gives the same
hardware pattern once that axis is laid out innermost.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax.config_checks import ConfigError

PATTERNS = ("unstructured", "2:4")
SCHEDULES = ("gradual", "oneshot")
STACKED = "layers"  # the module nn.scan stacks a model's layers in: one mask slice per layer


class PruneState(NamedTuple):
  count: jax.Array  # updates so far
  masks: Any  # like the params: bool kernels (True = kept), optax.MaskedNode elsewhere


def enabled(config: ml_collections.ConfigDict) -> bool:
  return config.prune.sparsity > 0


def end_step(config: ml_collections.ConfigDict) -> int:
  return config.prune.end_step or 3 * config.steps // 4


def check(config: ml_collections.ConfigDict) -> None:
  prune = config.prune
  if not 0 <= prune.sparsity < 1:
    raise ConfigError(f"prune.sparsity={prune.sparsity} must lie in [0, 1) (0.5 = half the "
                      f"weights)")
  if prune.pattern not in PATTERNS:
    raise ConfigError(f"prune.pattern={prune.pattern!r}; use one of {', '.join(PATTERNS)}")
  if prune.schedule not in SCHEDULES:
    raise ConfigError(f"prune.schedule={prune.schedule!r}; use one of {', '.join(SCHEDULES)}")
  if not enabled(config):
    return
  if prune.pattern == "2:4" and prune.sparsity != 0.5:
    raise ConfigError(f"prune.pattern='2:4' prunes half the weights; set prune.sparsity=0.5, "
                      f"not {prune.sparsity}")
  if prune.every < 1:
    raise ConfigError(f"prune.every={prune.every} must be at least 1")
  if not 0 <= prune.begin_step < end_step(config) <= config.steps:
    raise ConfigError(f"prune steps must satisfy 0 <= begin_step ({prune.begin_step}) < "
                      f"end_step ({end_step(config)}) <= steps ({config.steps})")


def sparsity_at(step: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """The schedule: the share of each kernel pruned after `step` updates."""
  prune, end = config.prune, end_step(config)
  begun = step >= prune.begin_step
  if prune.schedule == "oneshot":
    return jnp.where(begun, prune.sparsity, 0.0)
  moved = (step - prune.begin_step) // prune.every * prune.every
  progress = jnp.where(step >= end, 1.0, jnp.clip(moved / (end - prune.begin_step), 0.0, 1.0))
  return jnp.where(begun, prune.sparsity * (1 - (1 - progress) ** 3), 0.0)


def pruned_count(sparsity: jax.Array, size: int) -> jax.Array:
  return jnp.round(sparsity * size).astype(jnp.int32)


def is_target(path: tuple) -> bool:
  """Dense kernels are pruned; embeddings, norms and biases are not."""
  return getattr(path[-1], "key", None) == "kernel"


def is_stacked(path: tuple) -> bool:
  return STACKED in (getattr(k, "key", None) for k in path)


def keep_mask(kernel: jax.Array, mask: jax.Array, num_pruned: jax.Array, pattern: str):
  """One layer's new mask: `num_pruned` weights off, smallest |w| first, pruned ones first of all."""
  score = jnp.where(mask, jnp.abs(kernel), -1.0)
  if pattern == "2:4":  # only the two smallest of each group of 4 inputs may go
    groups = score.reshape(score.shape[0] // 4, 4, *score.shape[1:])
    rank_in_group = jnp.argsort(jnp.argsort(groups, axis=1, stable=True), axis=1, stable=True)
    score = jnp.where((rank_in_group < 2).reshape(score.shape), score, jnp.inf)
  rank = jnp.argsort(jnp.argsort(score.ravel(), stable=True), stable=True)
  return (rank >= num_pruned).reshape(kernel.shape)


def _check_groups(path, param, pattern: str) -> None:
  axis = 1 if is_stacked(path) else 0
  if pattern == "2:4" and param.shape[axis] % 4:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    raise ConfigError(f"prune.pattern='2:4' groups the first input axis of {name} "
                      f"(shape {param.shape}) by 4, and {param.shape[axis]} is not a multiple "
                      f"of 4; use prune.pattern=unstructured or a width divisible by 4")


def pruning(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Masks every update so that the parameters after it follow the schedule."""
  pattern = config.prune.pattern

  def init(params):
    def mask(path, param):
      if not is_target(path):
        return optax.MaskedNode()
      _check_groups(path, param, pattern)
      return jnp.ones(param.shape, bool)
    return PruneState(jnp.zeros((), jnp.int32),
                      jax.tree_util.tree_map_with_path(mask, params))

  def update(updates, state, params):
    count = state.count + 1
    target = sparsity_at(count, config)
    new_params = optax.apply_updates(params, updates)  # after this step, weight decay included

    def new_mask(path, mask, kernel):
      if isinstance(mask, optax.MaskedNode):
        return mask
      layers = kernel.shape[0] if is_stacked(path) else 1
      num_pruned = pruned_count(target, kernel.size // layers)  # in each layer
      keep = functools.partial(keep_mask, pattern=pattern)
      recompute = jax.vmap(keep, (0, 0, None)) if is_stacked(path) else keep
      return jax.lax.cond(jnp.sum(~mask) == layers * num_pruned, lambda: mask,
                          lambda: recompute(kernel, mask, num_pruned))

    masks = jax.tree_util.tree_map_with_path(new_mask, state.masks, new_params,
                                             is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    masked = jax.tree.map(
        lambda mask, update, param: update if isinstance(mask, optax.MaskedNode)
        else jnp.where(mask, update, -param), masks, updates, params,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    return masked, PruneState(count, masks)

  return optax.GradientTransformation(init, update)


def masked(tx: optax.GradientTransformation, config: ml_collections.ConfigDict):
  """`tx`, then pruning (when prune.sparsity > 0)."""
  return optax.chain(tx, pruning(config)) if enabled(config) else tx


def sparsity_metrics(opt_state) -> dict[str, jax.Array]:
  """"prune/sparsity" over all pruned kernels and "prune/LAYER/MODULE" for each layer's kernel
  (scanned stacks are split into layer_0, layer_1, ...); {} when nothing is pruned."""
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState))
            if isinstance(s, PruneState)]
  if not states:
    return {}
  metrics, pruned, total = {}, 0, 0
  for path, mask in jax.tree_util.tree_leaves_with_path(states[0].masks):
    names = [str(getattr(k, "key", k)) for k in path[:-1]]  # the module, without "kernel"
    pruned, total = pruned + jnp.sum(~mask), total + mask.size
    if is_stacked(path):
      at = names.index(STACKED)
      for i in range(mask.shape[0]):
        name = "/".join(names[:at] + [f"layer_{i}"] + names[at + 1:])
        metrics[f"prune/{name}"] = 1 - jnp.mean(mask[i])
    else:
      metrics[f"prune/{'/'.join(names)}"] = 1 - jnp.mean(mask)
  metrics["prune/sparsity"] = pruned / total
  return metrics
