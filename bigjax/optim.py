"""The optax optimizer and learning-rate schedule named by `config.optim`; several optimizers
over parameter groups (`GroupOptimizers`) for tasks that train several models (a GAN)."""

from typing import NamedTuple

import logging

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax.config_checks import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion")
SCHEDULES = ("cosine", "linear", "constant")


def schedule(optim: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine or linear decay to `min_lr_ratio * lr`, or flat.

  A warmup as long as the run or longer (a run shortened with `--config.steps`) is cut to the
  run, with a warning: the rate rises over every step and never decays.
  """
  if optim.schedule not in SCHEDULES:
    raise ConfigError(f"optim.schedule={optim.schedule!r}; use one of {', '.join(SCHEDULES)}")
  warmup = min(optim.warmup_steps, steps)
  if optim.warmup_steps >= steps:
    logging.getLogger("bigjax").warning(
        "optim.warmup_steps=%d is not below steps=%d: the learning rate warms up over the whole "
        "run and never decays; set optim.warmup_steps below steps for a schedule that does",
        optim.warmup_steps, steps)
  floor = optim.lr * optim.min_lr_ratio
  decay_steps = max(steps - warmup, 1)
  after = {
      "cosine": optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.min_lr_ratio),
      "linear": optax.linear_schedule(optim.lr, floor, decay_steps),
      "constant": optax.constant_schedule(optim.lr),
  }[optim.schedule]
  return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), after], [warmup])


def decay_mask(params):
  """Weight decay on matrices only: dense kernels. Norm scales, biases and embeddings are skipped."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(optim: ml_collections.ConfigDict, steps: int, skip_nonfinite: bool = False):
  """(optax transformation, schedule). Clipping comes first, so every optimizer sees it."""
  if optim.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={optim.name!r}; use one of {', '.join(OPTIMIZERS)}")
  lr = schedule(optim, steps)
  wd = optim.weight_decay
  if optim.name == "adamw":
    tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=wd, mask=decay_mask)
  elif optim.name == "adam":
    tx = optax.adam(lr, b1=optim.b1, b2=optim.b2)
  elif optim.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                     optax.sgd(lr, momentum=optim.momentum or None))
  elif optim.name == "adafactor":
    tx = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=decay_mask)
  else:
    tx = optax.lion(lr, b1=optim.b1, b2=optim.b2, weight_decay=wd, mask=decay_mask)
  if optim.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm), tx)
  if skip_nonfinite:
    # Keeps params and optimizer state unchanged on a step whose gradients are not finite.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)
  return tx, lr


class GroupOptimizers(NamedTuple):
  """Several optimizers, one per top-level parameter group, each stepping only in its own phase.

  Each is `optax.masked` to its group, so its state spans the whole parameter tree with
  MaskedNode outside the group: `optax.tree_map_params` lays it out like any one optimizer's
  state, and a checkpoint holds it like any other. The state is {group: that optimizer's state}.
  """

  by_group: dict[str, optax.GradientTransformation]

  @classmethod
  def over(cls, optimizers: dict[str, optax.GradientTransformation]) -> "GroupOptimizers":
    masks = {group: (lambda params, group=group: {k: k == group for k in params})
             for group in optimizers}
    return cls({group: optax.masked(tx, masks[group]) for group, tx in optimizers.items()})

  def init(self, params):
    return {group: tx.init(params) for group, tx in self.by_group.items()}

  def update_group(self, group: str, grads, state, params):
    """(updates of `group`'s parameters, new state): only `group`'s optimizer steps.

    Its masked optimizer takes gradients for the whole tree and passes the other groups' through
    untouched: zeros here, and never applied.
    """
    whole = {**jax.tree.map(jnp.zeros_like, params), group: grads}
    updates, group_state = self.by_group[group].update(whole, state[group], params)
    return updates[group], {**state, group: group_state}
