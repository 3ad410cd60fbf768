"""Checks that run before anything compiles, each failing with one line that says what to change.

Every key's allowed values live in one table, `configs/schema.py`, made of the rules below;
`check_values` applies it. Checks that need several keys or the devices (`check_config`), the
task (each task's constructor) or the workdir (`bigjax.workdir`) come after it.
"""

import dataclasses
import math
import os
import re
from typing import Any, Callable

import ml_collections


class ConfigError(ValueError):
  """A config, flag or input file that cannot work; the message says what to change."""


DTYPES = ("float32", "bfloat16", "float16")


# The rules a schema entry is made of. Each checks one value, and names values it refuses
# (`bad_values`), so tests/test_config_checks.py can try one on every key of the schema.

class Rule:
  def check(self, key: str, value) -> None:
    raise NotImplementedError

  def bad_values(self) -> list:
    raise NotImplementedError


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval(low, high, low_open: bool = False, high_open: bool = False) -> str:
  """"in [0, 1)", ">= 1", "> 0", or "" for no bounds."""
  if low is not None and high is not None:
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  if low is not None:
    return f"{'>' if low_open else '>='} {low}"
  return f"{'<' if high_open else '<='} {high}" if high is not None else ""


@dataclasses.dataclass(frozen=True)
class Integer(Rule):
  """An int in [min, max]; `also` lists values outside that range that mean something (-1)."""

  min: int | None = None
  max: int | None = None
  also: tuple[int, ...] = ()

  def check(self, key, value):
    in_range = _is_int(value) and ((self.min is None or value >= self.min)
                                   and (self.max is None or value <= self.max))
    if not (in_range or _is_int(value) and value in self.also):
      raise ConfigError(f"{key}={value!r} must be {self.describe()}")

  def describe(self) -> str:
    also = f"(or {', '.join(map(str, self.also))})" if self.also else ""
    return " ".join(filter(None, ("an integer", _interval(self.min, self.max), also)))

  def bad_values(self):
    bad = ["1", True, 1.5]
    if self.min is not None:
      bad.append(next(v for v in range(self.min - 1, self.min - 4, -1) if v not in self.also))
    if self.max is not None:
      bad.append(self.max + 1)
    return bad


@dataclasses.dataclass(frozen=True)
class Number(Rule):
  """A finite int or float; `min`/`max` are inclusive bounds, `above`/`below` exclusive ones."""

  min: float | None = None
  max: float | None = None
  above: float | None = None
  below: float | None = None

  def check(self, key, value):
    ok = _is_number(value) and math.isfinite(value) and all((
        self.min is None or value >= self.min, self.max is None or value <= self.max,
        self.above is None or value > self.above, self.below is None or value < self.below))
    if not ok:
      raise ConfigError(f"{key}={value!r} must be {self.describe()}")

  def describe(self) -> str:
    low = self.min if self.min is not None else self.above
    high = self.max if self.max is not None else self.below
    bounds = _interval(low, high, low_open=self.min is None, high_open=self.max is None)
    return f"a number {bounds}" if bounds else "a finite number"

  def bad_values(self):
    bad = ["1", True, float("nan"), float("inf")]
    bad += [b for b in (self.above, self.below) if b is not None]
    bad += [self.min - 1] if self.min is not None else []
    bad += [self.max + 1] if self.max is not None else []
    return bad


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
  values: tuple

  def check(self, key, value):
    if value not in self.values:
      raise ConfigError(f"{key}={value!r} is unknown; use one of "
                        f"{', '.join(str(v) if v != '' else repr(v) for v in self.values)}")

  def bad_values(self):
    return ["no-such-choice", 3]


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
  def check(self, key, value):
    if not isinstance(value, bool):
      raise ConfigError(f"{key}={value!r} must be True or False")

  def bad_values(self):
    return ["yes", 1]


@dataclasses.dataclass(frozen=True)
class Text(Rule):
  """A string, matching `pattern` if given (`example` shows one that does, `bad` one that
  does not)."""

  pattern: str = ""
  example: str = ""
  bad: str = ""

  def check(self, key, value):
    if not isinstance(value, str):
      raise ConfigError(f"{key}={value!r} must be a string")
    if self.pattern and not re.fullmatch(self.pattern, value):
      raise ConfigError(f"{key}={value!r} is malformed; write it like {self.example!r}")

  def bad_values(self):
    return [3] + ([self.bad] if self.pattern else [])


@dataclasses.dataclass(frozen=True)
class Path(Rule):
  """A path, or "" for none. `kind` "file"/"dir": what an existing path must be;
  `must_exist`: a path that is not there is an error (one the run writes may be missing)."""

  kind: str = "any"
  must_exist: bool = False

  def check(self, key, value):
    if not isinstance(value, str):
      raise ConfigError(f"{key}={value!r} must be a path (a string)")
    path = os.path.expanduser(value)
    if not value or not os.path.exists(path):
      if value and self.must_exist:
        raise ConfigError(f"{key}={value!r} does not exist; check the path")
      return
    if self.kind == "file" and not os.path.isfile(path):
      raise ConfigError(f"{key}={value!r} is a directory; point it at a file")
    if self.kind == "dir" and not os.path.isdir(path):
      raise ConfigError(f"{key}={value!r} is a file; point it at a directory")

  def bad_values(self):
    here = os.path.abspath(__file__)
    bad = [3]
    bad += ["/no/such/path"] if self.must_exist else []
    bad += [os.path.dirname(here)] if self.kind == "file" else []
    bad += [here] if self.kind == "dir" else []
    return bad


@dataclasses.dataclass(frozen=True)
class Regex(Rule):
  def check(self, key, value):
    try:
      re.compile(value)
    except (re.error, TypeError) as e:
      raise ConfigError(f"{key}={value!r} is not a regular expression ({e})") from None

  def bad_values(self):
    return ["(unclosed", 3]


@dataclasses.dataclass(frozen=True)
class Sizes(Rule):
  """A tuple of positive ints (layer widths), at least `min_len` long."""

  min_len: int = 0

  def check(self, key, value):
    if not (isinstance(value, (tuple, list)) and len(value) >= self.min_len
            and all(_is_int(v) and v > 0 for v in value)):
      at_least = f"at least {self.min_len} " if self.min_len else ""
      raise ConfigError(f"{key}={value!r} must be a tuple of {at_least}positive integers")

  def bad_values(self):
    return [(0,), (8, -1), (1.5,), "64"] + ([()] if self.min_len else [])


@dataclasses.dataclass(frozen=True)
class Custom(Rule):
  """`fn(key, value)` raises ConfigError for a bad value; `bad` lists values it refuses."""

  fn: Callable[[str, Any], None]
  bad: tuple

  def check(self, key, value):
    self.fn(key, value)

  def bad_values(self):
    return list(self.bad)


def leaves(config, prefix: str = ""):
  """(dotted key, value) of every leaf of a ConfigDict or dict, values as they are."""
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def check_values(config) -> None:
  """Every value within its key's rule in configs/schema.py (a key without one is not checked
  here: tests/test_config_checks.py names it)."""
  from configs import schema

  for key, value in leaves(config):
    if key in schema.SCHEMA:
      schema.SCHEMA[key].check(key, value)


def mesh_shape(mesh: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Resolves the one -1 axis to the devices that remain; the product must equal num_devices.

  `data` is the axis that takes what is left: its -1 (the default) becomes 1 when `fsdp` or
  `tensor` is -1, so `--config.mesh.fsdp=-1` alone means FSDP over every device.
  """
  shape = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
  if shape["data"] == -1 and -1 in (shape["fsdp"], shape["tensor"]):
    shape["data"] = 1
  free = [name for name, size in shape.items() if size == -1]
  if len(free) > 1:
    raise ConfigError(f"mesh axes {free} are all -1; at most one mesh axis may be -1")
  if any(size == 0 or size < -1 for size in shape.values()):
    raise ConfigError(f"mesh {shape} has a size below 1; use positive sizes or -1")
  fixed = math.prod(size for size in shape.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"mesh {shape}: {num_devices} devices do not divide by {fixed}; "
                        f"change the mesh sizes")
    shape[free[0]] = num_devices // fixed
  if math.prod(shape.values()) != num_devices:
    raise ConfigError(f"mesh {shape} needs {math.prod(shape.values())} devices but "
                      f"{num_devices} are present; set the mesh sizes so their product is "
                      f"{num_devices} (or use -1 for one axis)")
  return shape


def check_config(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1):
  """Everything that can be checked without compiling; returns the resolved mesh shape."""
  check_values(config)
  shape = mesh_shape(config.mesh, num_devices)
  batch_shards = shape["data"] * shape["fsdp"]
  if config.batch_size % batch_shards:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {batch_shards} "
                      f"data-parallel devices (mesh.data x mesh.fsdp); use a multiple of "
                      f"{batch_shards}")
  if config.batch_size % process_count:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {process_count} "
                      f"processes; use a multiple of {process_count}")
  accum = config.optim.grad_accum_steps
  if config.batch_size % (accum * batch_shards):
    raise ConfigError(f"optim.grad_accum_steps={accum}: batch_size={config.batch_size} must "
                      f"divide into {accum} microbatches of a multiple of {batch_shards} rows")
  if config.early_stop.patience and not config.early_stop.metric:
    raise ConfigError(f"early_stop.patience={config.early_stop.patience} needs "
                      f"early_stop.metric (e.g. eval/loss) to count evaluations by")
  return shape


def unknown_key(key: str) -> ConfigError:
  """The error for a config key base.py does not have, with the closest one it does."""
  import difflib

  from configs import base

  known = [k for k, _ in leaves(base.get_config())]
  close = difflib.get_close_matches(key, known, n=1)
  hint = f"; did you mean {close[0]}?" if close else "; see configs/base.py for every key"
  return ConfigError(f"config key {key} is unknown{hint}")


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Every key of `config` exists in the base config: a typo in an unlocked config (built in a
  notebook) fails here, as the command line's locked config would."""
  from configs import base

  known = {key for key, _ in leaves(base.get_config())}
  for key, _ in leaves(config):
    if key not in known:
      raise unknown_key(key)


def locked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config, locked: an unlocked one (from a notebook) is checked for unknown keys first."""
  if not config.is_locked:
    check_known_keys(config)
    config = ml_collections.ConfigDict(config.to_dict())
    config.lock()
  return config
