"""What a command prints: bigjax's own lines, each warning on one line, not its libraries' insides.

- bigjax's warnings read `warning: ...`, one line each, without absl's timestamp-and-thread prefix.
- Orbax narrates every save at INFO, and reports a failed write as a traceback from each of its
  background threads; the loop turns such a failure into one line of its own
  (`checkpoint.CheckpointError`), so Orbax's log records stay off the console.
- After a read that fails (a damaged checkpoint), TensorStore's callbacks keep calling into
  Orbax's event loop, already closed, and Python prints "Event loop is closed" for each; the
  fallback's one warning says what happened instead.
- gloo (CPU collectives across processes) announces every connection on stdout as the backend
  starts; `silent_stdout` hides that moment (`sharding.initialize_distributed`).
Commands call `quiet()` once at start; code that imports bigjax as a library keeps its own setup.
"""

import contextlib
import logging
import os
import sys


class _LevelPrefix(logging.Formatter):
  def format(self, record):
    return f"{record.levelname.lower()}: {record.getMessage()}"


def _not_orbax(record: logging.LogRecord) -> bool:
  return f"{os.sep}orbax{os.sep}" not in record.pathname


def _drop_known_noise(unraisable, default=sys.unraisablehook) -> None:
  error = unraisable.exc_value
  closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
  # A stop signal's exception raised inside a callback (JAX's gc hook) is dropped there; the
  # loop reports the signal itself before the first step (train.StopRequest.start).
  if not (closed_loop or isinstance(error, KeyboardInterrupt)):
    default(unraisable)


def quiet() -> None:
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").addFilter(_not_orbax)  # Orbax logs through absl
  ours = logging.getLogger("bigjax")
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(_LevelPrefix())
  ours.addHandler(handler)
  ours.propagate = False
  sys.unraisablehook = _drop_known_noise


@contextlib.contextmanager
def silent_stdout():
  """File descriptor 1 goes to /dev/null meanwhile: what C++ code prints there is dropped."""
  sys.stdout.flush()
  saved = os.dup(1)
  with open(os.devnull, "w") as devnull:
    os.dup2(devnull.fileno(), 1)
  try:
    yield
  finally:
    os.dup2(saved, 1)
    os.close(saved)
