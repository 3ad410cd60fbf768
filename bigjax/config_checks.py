"""Checks that run before anything compiles, each failing with one line that says what to change."""

import math
import os

import ml_collections


class ConfigError(ValueError):
  """A config, flag or input file that cannot work; the message says what to change."""


DTYPES = ("float32", "bfloat16", "float16")


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
  shape = mesh_shape(config.mesh, num_devices)
  positive = ["steps", "batch_size", "seq_len", "log_every", "eval_steps"]
  for key in positive:
    if config[key] <= 0:
      raise ConfigError(f"{key}={config[key]} must be positive")
  if config.dtype not in DTYPES:
    raise ConfigError(f"dtype={config.dtype!r}; use one of {', '.join(DTYPES)}")
  batch_shards = shape["data"] * shape["fsdp"]
  if config.batch_size % batch_shards:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {batch_shards} "
                      f"data-parallel devices (mesh.data x mesh.fsdp); use a multiple of "
                      f"{batch_shards}")
  if config.batch_size % process_count:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {process_count} "
                      f"processes; use a multiple of {process_count}")
  accum = config.optim.grad_accum_steps
  if accum < 1 or config.batch_size % (accum * batch_shards):
    raise ConfigError(f"optim.grad_accum_steps={accum}: batch_size={config.batch_size} must "
                      f"divide into {accum} microbatches of a multiple of {batch_shards} rows")
  if config.on_nonfinite not in ("stop", "skip"):
    raise ConfigError(f"on_nonfinite={config.on_nonfinite!r}; use 'stop' or 'skip'")
  return shape


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable before hours of compute depend on it."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be created ({e.strerror}); choose a "
                      f"writable directory") from None
  if not os.access(workdir, os.W_OK):
    raise ConfigError(f"--workdir={workdir} is not writable; choose a writable directory")


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Every key of `config` exists in the base config: a typo in an unlocked config (built in a
  notebook) fails here, as the command line's locked config would."""
  import difflib

  from configs import base

  def keys(node, prefix=""):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from keys(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}"

  known = set(keys(base.get_config()))
  for key in keys(config):
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean {close[0]}?" if close else "; see configs/base.py for every key"
      raise ConfigError(f"config key {key} is unknown{hint}")
