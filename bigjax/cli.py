"""What every bigjax command line shares: absl flags with the config file, and bad input or a
stopped run reported in one line (`error: ...`, exit status 2) instead of a traceback."""

import contextlib
import os
import re
import sys

from bigjax import config_checks
from bigjax.config_checks import ConfigError


def parse_flags(argv):
  """absl's parsing, with a bad flag or config override reported in one line, not a traceback."""
  from absl import flags
  try:
    _check_config_flags(argv)
    argv = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.task  # config_flags loads the file lazily: fail here, not mid-run
    return argv
  except Exception as e:  # config_flags raises KeyError/TypeError/ValueError/OSError as it goes
    fail(one_line(e, argv))


def _check_config_flags(argv) -> None:
  """A second --config would silently replace the first; refuse it."""
  given = [a for a in argv[1:] if a.split("=", 1)[0] in ("--config", "-config")]
  if len(given) > 1:
    raise ConfigError(f"--config is given {len(given)} times ({', '.join(given)}); give it once")


def one_line(error: Exception, argv) -> str:
  """config_flags' errors arrive wrapped (an unknown key as a KeyError naming only its last part,
  a bad variant as a traceback folded into the message): the cause, in one line."""
  detail = error.__cause__ or error
  while detail.args and isinstance(detail.args[0], BaseException):  # AttributeError(KeyError())
    detail = detail.args[0]
  if isinstance(detail, KeyError):
    last = re.split(r"[;\n]", str(detail.args[0] if detail.args else detail))[0].strip("'\" ")
    overrides = [a.split("=", 1)[0].removeprefix("--config.") for a in argv[1:]
                 if a.startswith("--config.")]
    key = next((o for o in overrides if o.split(".")[-1] == last), last)
    return str(config_checks.unknown_key(key))
  text = str(detail).replace("\\n", "\n").replace("\\'", "'")  # undo repr() escapes
  text = text[1:-1] if text[:1] == text[-1:] == "'" else text
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):  # the raised line, not the stack
    lines = [re.sub(r"^\w+(Error|Exception): ", "", lines[-1])]
  return "; ".join(lines)


def fail(message: str, status: int = 2) -> None:
  """Ends the command: `error: MESSAGE` on stderr, then exit at once.

  os._exit, not sys.exit: threads still at work (an XLA compile, an Orbax save that failed and
  waits for a signal that never comes) would hold the process open, or crash it while Python
  shuts down. Everything worth keeping is already on disk or flushed here.
  """
  print(f"error: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


@contextlib.contextmanager
def one_line_errors(*failures: type[BaseException]):
  """A ConfigError, or one of `failures` (a run stopped for a reason it states), ends the command
  in one line with exit status 2."""
  try:
    yield
  except (ConfigError, *failures) as e:
    fail(str(e))
