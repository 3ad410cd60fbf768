"""A workdir belongs to one run at a time, holds what it should, and resumes the config that wrote it.

Before anything compiles, the loop enters `claim(workdir)`, which checks
- the layout: WORKDIR, WORKDIR/checkpoints and WORKDIR/best are directories this process can
  write (not a file where a directory should be, not a read-only mount);
- the owner: WORKDIR/lock is locked (flock) while the run lives. The kernel drops the lock when
  the process ends, however it ends, so a killed run never blocks its own restart; a second run
  on the same workdir is refused with one line that names the holder;
and, once the config is known to be valid, calls `check_resume`:
- a resume whose config differs from the one stored with the newest checkpoint in anything but
  `configs.schema.MAY_CHANGE_ON_RESUME` is refused, naming the keys, unless
  `resume_with_changes` says the change is intended.
With several processes the workdir is shared: process 0 checks and locks it for the job, and
every process fails with its error.
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket

import jax
import ml_collections

from bigjax import multihost
from bigjax.config_checks import ConfigError, leaves

log = logging.getLogger(__name__)

SUBDIRECTORIES = ("checkpoints", "best")  # the ones the loop writes into
LOCK_FILE = "lock"


def check_layout(workdir: str) -> None:
  """The workdir and the directories the loop writes exist as directories it can write."""
  for path in (workdir, *(os.path.join(workdir, d) for d in SUBDIRECTORIES)):
    if os.path.exists(path) and not os.path.isdir(path):
      raise ConfigError(f"{path} is a file where a directory should be; move it away or use "
                        f"another --workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be created ({e.strerror}); choose a "
                      f"writable directory") from None
  for path in (workdir, *(os.path.join(workdir, d) for d in SUBDIRECTORIES)):
    if os.path.isdir(path) and not os.access(path, os.W_OK):
      raise ConfigError(f"{path} is not writable; choose a writable directory")


class Lock:
  """An exclusive flock on WORKDIR/lock, which also says who holds it."""

  def __init__(self, workdir: str):
    path = os.path.join(workdir, LOCK_FILE)
    try:
      self._file = open(path, "a+")  # "a+" keeps the holder's note readable until we hold it
    except OSError as e:
      raise ConfigError(f"--workdir={workdir} is not writable ({e.strerror}); choose a "
                        f"writable directory") from None
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another run"
      self._file.close()
      raise ConfigError(f"--workdir={workdir} is in use by {holder}; wait for that run to end "
                        f"or stop it, or use another --workdir") from None
    except OSError as e:  # a filesystem without locks (some network mounts)
      log.warning("cannot lock %s (%s); make sure no other run uses this workdir", path,
                  e.strerror)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    self._file.truncate(0)
    self._file.write(f"process {os.getpid()} on {socket.gethostname()} (since {started})\n")
    self._file.flush()

  def release(self) -> None:
    self._file.close()  # closing drops the flock


def changed_keys(stored: dict, current: dict) -> list[str]:
  """Keys set differently in `current` than in `stored`, except those that may change on
  resume; keys only one of them has (the code gained or lost a key) are not compared."""
  from configs.schema import MAY_CHANGE_ON_RESUME

  as_stored = lambda config: dict(leaves(json.loads(json.dumps(config))))  # tuples -> lists
  before, after = as_stored(stored), as_stored(current)
  return [f"{key}={before[key]!r} there, {after[key]!r} here" for key in sorted(before)
          if key in after and before[key] != after[key] and key not in MAY_CHANGE_ON_RESUME]


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 resume_with_changes: bool = False) -> None:
  """The config must be the one the newest checkpoint was written with (see the module doc).

  Every process reads it (opening Orbax's manager is collective) and reaches the same verdict.
  """
  from bigjax import checkpoint

  directory = os.path.join(workdir, "checkpoints")
  # Agreed: a process that arrives after another created the directory must not open the manager
  # (a collective) alone.
  if not multihost.any_process(os.path.isdir(directory)):
    return
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  try:
    stored = ckpt.stored_config()
  finally:
    ckpt.close()
  changes = changed_keys(stored, config.to_dict()) if stored is not None else []
  if not changes:
    return
  listed = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
  if not resume_with_changes:
    raise ConfigError(f"{directory} was written with another config ({listed}); rerun with that "
                      f"config, pass --resume_with_changes to continue with these changes, or "
                      f"use another --workdir")
  if jax.process_index() == 0:
    log.warning("resuming %s with changes: %s", workdir, listed)


@contextlib.contextmanager
def claim(workdir: str):
  """The workdir, checked and locked for the duration of the run."""
  def check_and_lock():
    if "://" in workdir:  # object storage (gs://): no local directory to check, no flock
      return None
    check_layout(workdir)
    return Lock(workdir)

  lock = multihost.on_primary(check_and_lock)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
