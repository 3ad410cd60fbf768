"""Orbax checkpoints of everything a run needs to continue: train state, data position, config.

Resume policy, in order:
- A run restores the newest checkpoint that reads back completely. Orbax writes each step into a
  temporary directory and renames it only when complete, so a run killed mid-save leaves no
  half-written step that looks finished.
- A step damaged afterwards (truncated or deleted files) is moved aside to `damaged/` with a
  warning that names it and the step used instead; nothing is deleted, so it can be inspected.
- A step whose arrays no longer match the model (the config changed) stops the run with a
  one-line error and leaves every checkpoint as it is: that is a mistake to fix, not damage.
Checkpoints hold arrays (TensorStore) and JSON only, no pickle, so loading one runs no code.
"""

import logging
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bigjax.config_checks import ConfigError

log = logging.getLogger(__name__)


def _leaf_shapes(tree) -> dict[str, tuple]:
  """{"params/embed/embedding": (256, 128), ...} whatever containers the tree is made of."""
  def name(key):
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpointer:
  def __init__(self, directory: str, keep: int, async_save: bool = True,
               best_metric: str = "", best_mode: str = "max"):
    """With `best_metric`, the `keep` steps kept are the best by it, not the newest."""
    self.directory = os.path.abspath(directory)
    best_fn = (lambda metrics: metrics[best_metric]) if best_metric else None
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           best_fn=best_fn, best_mode=best_mode)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: dict,
           metrics: dict[str, float] | None = None) -> None:
    """`metrics` are stored beside the step; with `best_metric` they must include it."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), metrics=metrics, force=True)

  def metrics(self, step: int) -> dict[str, float] | None:
    return self._manager.metrics(step)

  def restore(self, abstract_state):
    """(step, state, data_state) from the newest readable checkpoint, or None if there is none.

    `abstract_state` holds ShapeDtypeStructs with shardings: arrays are read straight into that
    layout, whatever mesh or device count wrote them.
    """
    for step in reversed(self.steps()):
      try:
        saved = self._manager.item_metadata(step)["state"]
        if saved is None:
          raise ValueError("no state metadata")
      except Exception as e:
        self._set_aside(step, e)
        continue
      self._check_matches(step, saved, abstract_state)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:
        self._set_aside(step, e)
        continue
      return step, restored["state"], restored["data"]
    return None

  def read_config(self, step: int) -> dict:
    """The config dict saved with `step`."""
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]

  def _check_matches(self, step: int, saved, abstract_state) -> None:
    want, have = _leaf_shapes(abstract_state), _leaf_shapes(saved)
    missing = sorted(set(want) - set(have))
    params_first = sorted(want, key=lambda k: (not k.startswith("params"), k))
    changed = [f"{k} is {have[k]} there, {want[k]} here" for k in params_first
               if k in have and have[k] != want[k]]
    if missing or changed:
      detail = changed[0] if changed else f"{missing[0]} is not in the checkpoint"
      raise ConfigError(f"checkpoint {self.directory}/{step} does not match this config "
                        f"({detail}); use the config that wrote it or a new --workdir")

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable step to damaged/ (never deletes it) and says what comes instead."""
    aside = os.path.join(self.directory, "damaged", f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()
    older = [s for s in self.steps() if s < step]
    log.warning("checkpoint step %d is unreadable (%s: %s); moved it to %s and resuming from %s",
                step, type(error).__name__, str(error).split("\n")[0][:200], aside,
                f"step {older[-1]}" if older else "scratch")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def restore_params(state_directory: str, abstract_params):
  """The parameters `abstract_params` names, read from a step's `state` item into the layout its
  ShapeDtypeStructs carry (a subtree: other parameters and the optimizer state are not read)."""
  checkpointer = ocp.PyTreeCheckpointer()
  target = {"params": abstract_params}
  return checkpointer.restore(state_directory, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))["params"]
