"""Orbax checkpoints of everything a run needs to continue: train state, data position, config.

Resume policy, in order:
- A run restores the newest checkpoint that reads back completely. Orbax writes each step into a
  temporary directory and renames it only when complete, so a run killed mid-save leaves no
  half-written step that looks finished.
- A step damaged afterwards (truncated or deleted files) is moved aside to `damaged/` with a
  warning that names it and the step used instead; nothing is deleted, so it can be inspected.
  Everything read from a step is checked together: the arrays, the data position (handed to the
  data iterator, which refuses a position it cannot take), the stored config.
- A step whose arrays no longer match the model (the config changed) stops the run with a
  one-line error and leaves every checkpoint as it is: that is a mistake to fix, not damage.
- A save that fails (disk full, a path that is not a directory) stops the run at once with one
  line (`CheckpointError`): the step, the path, the cause, the space a checkpoint needs and the
  last good step. Saves run in the background; `check()` finds a failed one without waiting.
Checkpoints hold arrays (TensorStore) and JSON only, no pickle, so loading one runs no code.
"""

import errno
import logging
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bigjax.config_checks import ConfigError

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint that could not be written; the message says where, why, and what is kept."""


def _first_line(error: BaseException) -> str:
  text = str(error).strip().split("\n")[0] or type(error).__name__
  return text if len(text) <= 240 else text[:240] + "..."


def _cause(error: BaseException) -> str:
  text = _first_line(error)
  full = ("No space left" in text or "RESOURCE_EXHAUSTED" in text  # TensorStore's word for it
          or getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT))
  return "no space left on the device (or quota)" if full else f"{type(error).__name__}: {text}"


def _size(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def _free_bytes(path: str) -> int:
  while not os.path.exists(path):  # a save that failed early may not have made its directory
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def _leaf_shapes(tree) -> dict[str, tuple]:
  """{"params/embed/embedding": (256, 128), ...} whatever containers the tree is made of."""
  def name(key):
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
              "config": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, **options), item_handlers=handlers)


class Checkpointer:
  def __init__(self, directory: str, keep: int, async_save: bool = True,
               best_metric: str = "", best_mode: str = "max"):
    """With `best_metric`, the `keep` steps kept are the best by it, not the newest."""
    self.directory = os.path.abspath(directory)
    best_fn = (lambda metrics: metrics[best_metric]) if best_metric else None
    options = dict(max_to_keep=keep, enable_async_checkpointing=async_save, best_mode=best_mode)
    try:
      self._manager = _manager(self.directory, best_fn=best_fn, **options)
    except Exception:  # opening reads every step's stored metrics: one does not read back
      self._manager = _manager(self.directory, best_fn=None, lightweight_initialize=True,
                               **options)
      for step in self.steps():
        try:
          self._manager.metrics(step)
        except Exception as e:
          self._set_aside(step, e, best=True)
      self._manager.close()
      self._manager = _manager(self.directory, best_fn=best_fn, **options)
    self.last_good = max(self.steps(), default=None)  # the newest step known to be written
    self._writing = None  # (step, bytes) of the save running in the background
    self._failed = False

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: dict,
           metrics: dict[str, float] | None = None) -> None:
    """Starts writing `step` in the background, once the previous save is known to be good.

    `metrics` are stored beside the step; with `best_metric` they must include it.
    """
    self.wait()
    self._writing = (step, sum(x.nbytes for x in jax.tree.leaves(state)))
    self._guard(lambda: self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), metrics=metrics, force=True))

  def check(self) -> None:
    """Raises CheckpointError if the background save has failed; never waits for one."""
    if self._writing and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Waits for the background save; CheckpointError if it failed."""
    if self._writing:
      self._guard(self._manager.wait_until_finished)
      self.last_good, self._writing = self._writing[0], None

  def close(self) -> None:
    """Finishes the background save and releases Orbax's threads. After a failed save it only
    returns: Orbax's threads may never end, so a command line exits without waiting for them."""
    if not self._failed:
      self.wait()
      self._manager.close()

  def _guard(self, write) -> None:
    """Runs `write`; any failure becomes one CheckpointError line."""
    try:
      write()
    except Exception as e:
      self._failed = True
      step, needed = self._writing
      good = (f"step {self.last_good} in {self.directory}" if self.last_good is not None
              else "none")
      raise CheckpointError(
          f"saving step {step} to {self.directory} failed ({_cause(e)}); a checkpoint needs "
          f"about {_size(needed)} and {_size(_free_bytes(self.directory))} are free there; the "
          f"last good checkpoint is {good}. Fix the cause (free space, a writable directory), "
          f"then rerun the same command to resume from it") from None

  def restore(self, abstract_state, data_iterator=None):
    """(step, state, data_state) from the newest readable checkpoint, or None if there is none.

    `abstract_state` holds ShapeDtypeStructs with shardings: arrays are read straight into that
    layout, whatever mesh or device count wrote them. `data_iterator` (optional) is moved to the
    step's data position as part of reading it: a position it refuses makes the step unreadable,
    and without a readable step it is put back where it was.
    """
    start = data_iterator.get_state() if data_iterator is not None else None
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
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        if not isinstance(restored["config"], dict):
          raise ValueError(f"the stored config is {type(restored['config']).__name__}")
        if data_iterator is not None:
          data_iterator.set_state(restored["data"])
      except Exception as e:
        self._set_aside(step, e)
        continue
      return step, restored["state"], restored["data"]
    if data_iterator is not None:
      data_iterator.set_state(start)
    return None

  def newest_scored(self, metric: str) -> tuple[int, float] | None:
    """(step, its `metric`) of the newest step whose metadata and stored metrics read back (the
    best checkpoint's), setting unreadable ones aside; None if there is none."""
    for step in reversed(self.steps()):
      try:
        if self._manager.item_metadata(step)["state"] is None:
          raise ValueError("no state metadata")
        value = float((self._manager.metrics(step) or {})[metric])
      except Exception as e:
        self._set_aside(step, e, best=True)
        continue
      return step, value
    return None

  def stored_config(self) -> dict | None:
    """The config saved with the newest step whose config reads back, or None if none does
    (restoring sets unreadable steps aside, with a warning)."""
    for step in reversed(self.steps()):
      try:
        config = self.read_config(step)
      except Exception:
        continue
      if isinstance(config, dict):
        return config
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

  def _set_aside(self, step: int, error: Exception, best: bool = False) -> None:
    """Moves an unreadable step to damaged/ (never deletes it) and says what comes instead."""
    aside = os.path.join(self.directory, "damaged", f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()
    older = [s for s in self.steps() if s < step]
    if best:
      instead = f"keeping step {older[-1]} as the best" if older else "no best step is kept yet"
    else:
      instead = f"resuming from step {older[-1]}" if older else "starting from step 0"
    log.warning("checkpoint step %d is unreadable (%s: %s); moved it to %s; %s", step,
                type(error).__name__, _first_line(error)[:200], aside, instead)


def restore_params(state_directory: str, abstract_params):
  """The parameters `abstract_params` names, read from a step's `state` item into the layout its
  ShapeDtypeStructs carry (a subtree: other parameters and the optimizer state are not read)."""
  checkpointer = ocp.PyTreeCheckpointer()
  target = {"params": abstract_params}
  return checkpointer.restore(state_directory, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))["params"]
