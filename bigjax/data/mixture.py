"""Language-model windows from one or more token streams, drawn in proportion to weights.

    --config.data.source=shards --config.data.mixture=runs/web:0.7,runs/code:0.3

Each component's windows are shuffled on their own (seed + component number) and the components
are interleaved by grain's `MapDataset.mix` in a fixed pattern: in every prefix of the sequence
each component's count is within two windows of its weight's share. So the mix is deterministic
from the seed, a resumed run continues it exactly (the position is the batch number, as for one
stream), and the share of each component in any run of batches matches its weight. A component smaller than its share of the run is simply repeated more often.
"""

import functools
import os

import grain
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import pipeline
from bigjax.data.lm import TokenWindows, as_example


def parse(spec: str) -> list[tuple[str, float]]:
  """"DIR:WEIGHT,DIR:WEIGHT" -> [(DIR, weight)], each directory existing, each weight positive."""
  parts = []
  for item in spec.split(","):
    path, _, weight = item.strip().rpartition(":")
    try:
      weight = float(weight)
    except ValueError:
      weight = -1.0
    if not path or weight <= 0:
      raise ConfigError(f"data.mixture item {item!r} is not DIR:WEIGHT with a positive weight; "
                        f"write e.g. runs/web:0.7,runs/code:0.3")
    if not os.path.isdir(path):
      raise ConfigError(f"data.mixture names {path!r}, which is not a directory")
    parts.append((path, weight))
  return parts


def _tagged(component: int, index: int) -> tuple[int, int]:
  return component, index


class Mixture:
  """Windows of seq_len + 1 tokens of each stream; a key is (component, window index)."""

  def __init__(self, streams: list, weights: list[float], seq_len: int):
    self.windows = [TokenWindows(stream, seq_len) for stream in streams]
    self.weights = [w / sum(weights) for w in weights]

  def _mix(self, parts: list[grain.MapDataset]) -> grain.MapDataset:
    tagged = [part.map(functools.partial(_tagged, c)) for c, part in enumerate(parts)]
    return tagged[0] if len(tagged) == 1 else grain.MapDataset.mix(tagged, self.weights)

  def train_order(self, seed: int) -> grain.MapDataset:
    """Position -> key: endless, each component reshuffled at each of its own epochs."""
    return self._mix([pipeline.shuffled(len(w), seed + c) for c, w in enumerate(self.windows)])

  def eval_keys(self) -> grain.MapDataset:
    """Every window of the (held-out) streams once, mixed by weight until one runs out."""
    return self._mix([grain.MapDataset.range(len(w)) for w in self.windows])

  def read(self, key: tuple[int, int], rng: np.random.Generator | None = None) -> dict:
    del rng  # windows are fixed
    component, index = key
    return as_example(self.windows[component][index])
