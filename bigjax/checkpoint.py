"""Orbax checkpoints of everything a run needs to continue: train state, data position, config.

Resume policy: a run restores the newest checkpoint that reads back completely. Orbax writes each
step into a temporary directory and renames it only when complete, so a run killed mid-save leaves
no half-written step behind; a step damaged afterwards (truncated, files deleted) is skipped with
a warning that names it and the step used instead. Nothing here ever deletes a checkpoint except
Orbax's keep-the-newest-N rotation. Checkpoints hold arrays and JSON only: no pickle, so loading
one never runs code.
"""

import logging
import os

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def restore(self, abstract_state):
    """(step, state, data_state) from the newest readable checkpoint, or None if there is none.

    `abstract_state` holds ShapeDtypeStructs with shardings: arrays are read straight into that
    layout, whatever mesh wrote them.
    """
    steps = self.steps()
    for i, step in enumerate(reversed(steps)):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # a damaged step: try the one before, never delete it
        older = steps[-i - 2] if i + 1 < len(steps) else None
        log.warning("checkpoint %s/%d is unreadable (%s: %s); falling back to %s", self.directory,
                    step, type(e).__name__, str(e).splitlines()[0] if str(e) else "",
                    f"step {older}" if older is not None else "a fresh start")
        continue
      return step, restored["state"], restored["data"]
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
