"""What every bigjax command line shares: absl flags with the config file, and bad input
reported in one line (`error: ...`, exit status 2) instead of a traceback."""

import sys


def exit_with_error(e: Exception) -> None:
  """Prints `e` as one `error: ...` line and exits with status 2."""
  detail = e.__cause__ or e
  while isinstance(detail, KeyError) and detail.args:  # a KeyError's str() is its repr
    detail = detail.args[0]
  text = str(detail).replace("\\n", "\n").replace("\\'", "'")  # undo repr() escapes
  text = text[1:-1] if text[:1] == text[-1:] == "'" else text
  print("error: " + "; ".join(line.strip() for line in str(text).splitlines() if line.strip()),
        file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parsing, with a bad flag or config override reported in one line, not a traceback."""
  from absl import flags
  try:
    argv = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.task  # config_flags loads the file lazily: fail here, not mid-run
    return argv
  except Exception as e:  # config_flags raises KeyError/TypeError/ValueError/OSError as it goes
    exit_with_error(e)
