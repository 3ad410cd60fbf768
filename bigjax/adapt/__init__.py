"""Adaptation and compression: LoRA/QLoRA, quantization, pruning, and the frozen parameters
they share with distillation. `bigjax.build` calls this package at its few named points:

    adapt_task(task, config, platform)  checks, then wraps `task.model` (LoRA, QAT or PTQ)
    prune.masked(tx, config)            pruning masks in the optimizer state, after each update
    trainable_split(config)             params -> (trainable, frozen); the optimizer sees the first
    load_pretrained(...)                init_from (quantized for QLoRA), a distillation teacher
    checkpointed(state, config)         what a checkpoint holds: a LoRA run's adapters, no base

Frozen parameters never reach the optimizer: no gradients are taken for them, no moments are
kept, and weight decay cannot move them. What is frozen: everything but the adapters (LoRA), the
teacher (distillation), everything (a post-training-quantized run, which only evaluates).
"""

from typing import Any, Callable

import ml_collections

from bigjax import finetune
from bigjax.adapt import lora, prune, quantize
from bigjax.config_checks import ConfigError
from bigjax.tasks.base import Task, TransformerTask
from bigjax.tasks.distill import TEACHER, DistillTask

Path = tuple[str, ...]


def adapt_task(task: Task, config: ml_collections.ConfigDict, platform: str) -> None:
  """Checks the adaptation settings, then wraps `task.model` in place (nothing is traced yet)."""
  lora.check(config, platform)
  quantize.check(config)
  prune.check(config)
  adapting = [name for name, on in (("lora", lora.enabled(config)),
                                    ("quant", quantize.enabled(config)),
                                    ("prune", prune.enabled(config))) if on]
  if len(adapting) > 1:
    raise ConfigError(f"{' and '.join(adapting)} are both set; use one at a time (QLoRA is "
                      f"lora.base_qtype; quantize a pruned run with bigjax.quantize)")
  if (lora.enabled(config) or quantize.enabled(config)) and not isinstance(task, TransformerTask):
    raise ConfigError(f"{adapting[0]} applies to Transformer tasks; task={config.task} is not one")
  if quantize.enabled(config) or config.lora.base_qtype:
    quantize.check_tiles(config, task.model_cfg)
  if lora.enabled(config):
    task.model = lora.wrap(task.model, config)
  elif quantize.enabled(config):
    task.model = quantize.wrap(task.model, config)


def frozen_filter(config: ml_collections.ConfigDict) -> Callable[[Path], bool] | None:
  """Which parameter paths never train, or None when every parameter trains."""
  if lora.enabled(config):
    return lambda path: not lora.is_adapter(path)
  if quantize.enabled(config) and config.quant.mode == "ptq":
    return lambda path: True
  if config.task == "distill":
    return lambda path: path[0] == TEACHER
  return None


def partition(params: dict, is_frozen: Callable[[Path], bool], path: Path = ()):
  """(trainable, frozen): two nested dicts that split the leaves of `params` between them."""
  trainable, frozen = {}, {}
  for key, value in params.items():
    if isinstance(value, dict):
      value_trainable, value_frozen = partition(value, is_frozen, (*path, key))
      trainable.update({key: value_trainable} if value_trainable else {})
      frozen.update({key: value_frozen} if value_frozen else {})
    else:
      (frozen if is_frozen((*path, key)) else trainable)[key] = value
  return trainable, frozen


def merge(trainable: dict, frozen: dict) -> dict:
  """The inverse of `partition`: one tree with the leaves of both."""
  if not frozen:
    return trainable
  merged = dict(trainable)
  for key, value in frozen.items():
    merged[key] = merge(merged[key], value) if key in merged else value
  return merged


def trainable_split(config: ml_collections.ConfigDict) -> Callable[[dict], tuple[dict, dict]]:
  """params -> (trainable, frozen); (params, {}) when every parameter trains.

  With LoRA on, a target regex that gave no module an adapter fails here, on the abstract
  parameters, before anything compiles.
  """
  is_frozen = frozen_filter(config)
  if is_frozen is None:
    return lambda params: (params, {})

  def split(params):
    trainable, frozen = partition(params, is_frozen)
    if lora.enabled(config) and not trainable:
      lora.no_adapters_error(config, frozen)
    return trainable, frozen

  return split


class WithFrozen:
  """`task` whose `loss` takes the trainable parameters alone, the frozen ones merged back in:
  gradients are taken for what trains and for nothing else."""

  def __init__(self, task: Task, frozen: dict):
    self.task, self.frozen = task, frozen

  def loss(self, trainable, batch, rng, train: bool):
    return self.task.loss(merge(trainable, self.frozen), batch, rng, train)


def with_frozen(task: Task, frozen: dict):
  return WithFrozen(task, frozen) if frozen else task


def load_pretrained(params: dict, abstract_params: Any, config: ml_collections.ConfigDict,
                    task: Task) -> dict:
  """A fresh run's parameters with what comes from elsewhere read in: `init_from` (quantized on
  the way in for QLoRA) and a distillation teacher."""
  if config.init_from and lora.enabled(config) and config.lora.base_qtype:
    params = lora.load_quantized_base(params, abstract_params, config.init_from)
  elif config.init_from:
    params = finetune.load_pretrained(params, abstract_params, config.init_from)
  if isinstance(task, DistillTask):
    params = task.with_teacher(params, abstract_params)
  return params


def checkpointed(state, config: ml_collections.ConfigDict):
  """The part of a TrainState a checkpoint holds: a LoRA run keeps its adapters and their
  optimizer state, and refers to its base through its config (init_from, or the seed)."""
  if not lora.enabled(config):
    return state
  return state.replace(params=trainable_split(config)(state.params)[0])
