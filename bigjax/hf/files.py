"""Hugging Face model files: config.json and (sharded) safetensors, read and written with the
`safetensors` package's numpy API, one tensor at a time.

A checkpoint is `model.safetensors`, or shards `model-0000k-of-0000n.safetensors` listed by
`model.safetensors.index.json` ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}).
"""

import json
import os
import re
from typing import Iterable

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bigjax.config_checks import ConfigError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def is_model_directory(path: str) -> bool:
  """A Hugging Face model directory (config.json at the top), rather than a bigjax run."""
  return os.path.isfile(os.path.join(path, "config.json"))


def read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"{directory} has no config.json; pass a Hugging Face model directory")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class TensorFiles:
  """The tensors of a checkpoint by name, each read from its file when asked for."""

  def __init__(self, directory: str):
    self.directory = directory
    if os.path.isfile(os.path.join(directory, INDEX)):
      with open(os.path.join(directory, INDEX), encoding="utf-8") as f:
        files = json.load(f)["weight_map"]
    elif os.path.isfile(os.path.join(directory, SINGLE)):
      with safe_open(os.path.join(directory, SINGLE), "numpy") as f:
        files = {name: SINGLE for name in f.keys()}
    else:
      torch_only = [n for n in os.listdir(directory) if n.endswith((".bin", ".pt", ".pth"))]
      hint = (f" (it has {torch_only[0]}, a PyTorch pickle: save it with safe_serialization=True)"
              if torch_only else "")
      raise ConfigError(f"{directory} has no weights: neither {SINGLE} nor {INDEX}{hint}")
    self._source = {name: (name, file) for name, file in files.items()}
    self._open = {}

  def rename(self, new_name) -> None:
    """Refers to each tensor by `new_name(its name in the file)` from now on."""
    self._source = {new_name(name): source for name, source in self._source.items()}

  def names(self) -> set[str]:
    return set(self._source)

  def __contains__(self, name: str) -> bool:
    return name in self._source

  def shape(self, name: str) -> tuple[int, ...]:
    original, file = self._source[name]
    return tuple(self._handle(file).get_slice(original).get_shape())

  def read(self, name: str) -> np.ndarray:
    """The tensor in float32 (bigjax keeps parameters in float32 whatever the file holds)."""
    original, file = self._source[name]
    return np.asarray(self._handle(file).get_tensor(original), np.float32)

  def _handle(self, file: str):
    if file not in self._open:
      path = os.path.join(self.directory, file)
      if not os.path.isfile(path):
        raise ConfigError(f"{INDEX} in {self.directory} names {file}, which is missing")
      self._open[file] = safe_open(path, "numpy")
    return self._open[file]


def parse_size(text: str) -> int:
  """"5GB" -> 5 * 10**9 bytes (transformers' units: GB is 10**9, GiB 2**30)."""
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text.upper())
  if not match:
    raise ConfigError(f"max_shard_size={text!r}; write a size such as 5GB, 500MB or 2GiB")
  return int(float(match[1]) * UNITS[match[2] or "B"])


def write_safetensors(directory: str, tensors: Iterable[tuple[str, np.ndarray]],
                      max_shard_size: int, dtype: str) -> list[str]:
  """Writes `tensors` in order, in `dtype` (a key of DTYPES), as one file or as shards of at most `max_shard_size` bytes (a
  tensor larger than that gets a shard of its own) with their index. Returns the files written.

  Shards are written as they fill, so at most one shard's tensors are in memory at once; they get
  their final `-of-` names once their number is known.
  """
  os.makedirs(directory, exist_ok=True)
  umask = os.umask(0)
  os.umask(umask)
  shards, current, size, total = [], {}, 0, 0

  def flush():
    path = os.path.join(directory, f"shard-{len(shards)}.tmp")
    save_file(current, path, metadata={"format": "pt"})  # transformers reads "pt" files
    os.chmod(path, 0o666 & ~umask)  # safetensors creates owner-only files; share like any other
    shards.append((path, list(current)))

  for name, array in tensors:
    array = np.ascontiguousarray(array.astype(DTYPES[dtype]))
    if current and size + array.nbytes > max_shard_size:
      flush()
      current, size = {}, 0
    current[name] = array
    size += array.nbytes
    total += array.nbytes
  flush()
  if len(shards) == 1:
    os.replace(shards[0][0], os.path.join(directory, SINGLE))
    return [SINGLE]
  weight_map, files = {}, []
  for k, (path, names) in enumerate(shards):
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    os.replace(path, os.path.join(directory, file))
    weight_map.update({name: file for name in names})
    files.append(file)
  with open(os.path.join(directory, INDEX), "w", encoding="utf-8") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return files + [INDEX]
