"""The vocabulary the architecture modules (gpt2.py, llama.py, bert.py) write their tables in.

A `Tensor` names one Hugging Face tensor, the bigjax parameter(s) it holds and how its layout
differs. bigjax kernels are created in their final multi-dimensional shape (D x H x K for a query,
H x K x D for an attention output); Hugging Face stores every kernel as a matrix:
  "linear"  torch nn.Linear: (outputs, inputs), the transpose of a flattened bigjax kernel;
  "conv1d"  GPT-2's Conv1D: (inputs, outputs), a flattened bigjax kernel as it is;
  "flat"    a vector, e.g. a query bias of H x K in bigjax, H*K in Hugging Face;
  "same"    the very same shape (embeddings, norm scales, output biases).
Where Hugging Face fuses several bigjax parameters into one tensor (GPT-2's c_attn holds the query,
key and value projections), they are concatenated along its last axis, in the order listed.

The same table reads a checkpoint (to_bigjax) and writes one (to_hf), so the two directions
cannot drift apart.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from bigjax.config_checks import ConfigError

LAYOUTS = ("same", "flat", "linear", "conv1d")


@dataclasses.dataclass(frozen=True)
class Tensor:
  hf: str  # the Hugging Face name; "{i}" stands for the layer index in per-layer tensors
  bigjax: tuple[str, ...]  # "/"-joined parameter paths (within a layer for per-layer tensors)
  layout: str = "same"
  n_in: int = 1  # kernels: how many leading bigjax dimensions are the inputs
  optional: bool = False  # a bigjax model of this architecture may lack it (written if present)

  def __post_init__(self):
    if isinstance(self.bigjax, str):
      object.__setattr__(self, "bigjax", (self.bigjax,))
    assert self.layout in LAYOUTS, self.layout

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face shape of one bigjax parameter of `shape` (before any fusing)."""
    if self.layout == "same":
      return tuple(shape)
    if self.layout == "flat":
      return (math.prod(shape),)
    inputs, outputs = math.prod(shape[:self.n_in]), math.prod(shape[self.n_in:])
    return (outputs, inputs) if self.layout == "linear" else (inputs, outputs)

  def fused_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face tensor's shape when each of its bigjax parts has `shape`."""
    one = self.hf_shape(shape)
    return one[:-1] + (one[-1] * len(self.bigjax),)

  def to_bigjax(self, array: np.ndarray, part: int, shape: tuple[int, ...]) -> np.ndarray:
    """Part `part` of the Hugging Face `array`, as the bigjax parameter of `shape`."""
    array = np.split(array, len(self.bigjax), axis=-1)[part] if len(self.bigjax) > 1 else array
    return (array.T if self.layout == "linear" else array).reshape(shape)

  def to_hf(self, arrays: list[np.ndarray]) -> np.ndarray:
    """The Hugging Face tensor holding the bigjax parameters `arrays` (one per path)."""
    def one(array):
      if self.layout == "linear":
        return array.reshape(math.prod(array.shape[:self.n_in]), -1).T
      return array.reshape(self.hf_shape(array.shape))
    parts = [one(np.asarray(a)) for a in arrays]
    return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1))


def require(hf: dict[str, Any], field: str, allowed: tuple, default: Any = None) -> Any:
  """`hf[field]` (or `default` when absent) if bigjax can honour it; a one-line error if not."""
  value = hf.get(field, default)
  if value not in allowed:
    raise ConfigError(f"config.json has {field}={value!r}, which bigjax does not implement "
                      f"(it supports {', '.join(map(repr, allowed))})")
  return value
