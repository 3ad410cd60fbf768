"""Agreement between the processes of one job: every process must take the same decision at the
same step, or a collective (a step, a checkpoint save) waits forever for the ones that did not.
"""

from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from bigjax.config_checks import ConfigError

T = TypeVar("T")
MESSAGE_BYTES = 2048  # an error line broadcast from process 0 is cut to this length


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on at least one (a host-side all-reduce)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.process_allgather(np.int32(flag)).max())


def on_primary(fn: Callable[[], T]) -> T | None:
  """Runs `fn` on process 0 alone; its failure is a ConfigError on every process.

  Work done once for the job (checking a W&B key, training a tokenizer) must not leave the other
  processes waiting at the next collective until the heartbeat blames a lost peer: they wait
  here for process 0's outcome instead, and fail with its message.
  """
  result, error = None, ""
  if jax.process_index() == 0:
    try:
      result = fn()
    except ConfigError as e:
      error = str(e)
    except Exception as e:  # e.g. SentencePiece refusing a corpus: a one-line error everywhere
      error = f"process 0 failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  if jax.process_count() > 1:
    encoded = np.zeros(MESSAGE_BYTES, np.uint8)
    raw = error.encode()[:MESSAGE_BYTES]
    encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
    encoded = multihost_utils.broadcast_one_to_all(encoded)
    error = bytes(encoded).rstrip(b"\0").decode(errors="replace")
  if error:
    raise ConfigError(error)
  return result
