"""JSON Lines: one JSON object per line; a bad line is an error that names its file and line."""

import json
from typing import Callable, Iterator

from bigjax.config_checks import ConfigError


def parse(line: bytes | str, where: Callable[[], str]) -> dict:
  """One line -> its object; `where()` ("FILE:LINE") is only computed for the error."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{where()}: not JSON ({e.msg}); each line must be one JSON object") from None
  if not isinstance(record, dict):
    raise ConfigError(f"{where()}: a JSON {type(record).__name__}, not an object")
  return record


def read(path: str) -> Iterator[tuple[str, dict]]:
  """("FILE:LINE", object) for each non-blank line of a file."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        where = f"{path}:{number}"
        yield where, parse(line, lambda: where)
