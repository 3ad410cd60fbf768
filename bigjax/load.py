"""`bigjax.load(path)`: a trained run's config, model, parameters and tokenizer, from Python.

    import bigjax
    run = bigjax.load("runs/gpt_tiny")                  # newest checkpoint; best=True: WORKDIR/best
    tokens_BxL = run.tokenizer.encode("def ")[None]
    logits_BxLxV, _ = run.model.apply({"params": run.params}, tokens_BxL)

`path` is a workdir, its `checkpoints` (or `best`) directory, one step directory, or a Hugging
Face model directory (config.json, safetensors, tokenizer.json; see bigjax/hf). Parameters are
read straight onto the available devices (replicated, or FSDP-sharded with `mesh`); the optimizer
state is never read. A LoRA run's checkpoint holds its adapters: the base is rebuilt from the
run's reference to it (init_from). A quantized run (bigjax.quantize) loads as integers. `save`
writes the parameters-only runs that `bigjax.lora merge` and `bigjax.quantize` produce.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from bigjax import build, checkpoint, methods
from bigjax import workdir as workdir_lib
from bigjax.adapt import lora
from bigjax.config_checks import ConfigError
from bigjax.hf import convert, files
from bigjax.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  config: ml_collections.ConfigDict  # the run's own config, as it trained
  model: nn.Module  # the Flax module: model.apply({"params": params}, ...)
  params: Any  # restored onto the devices
  tokenizer: Any  # encode(str) -> ids, decode(ids) -> str; None for image and tabular tasks
  task: Task  # the objective, for its eval and decoding methods
  step: int  # the checkpoint's step (0 for a Hugging Face model)
  directory: str  # the checkpoint directory it came from


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A saved config dict back into a locked ConfigDict of the current schema."""
  from configs import base  # the schema: every key a config may hold

  config = base.get_config()
  try:
    config.update(saved)
  except (KeyError, TypeError, AttributeError) as e:
    raise ConfigError(f"the saved config does not fit this version of bigjax ({e}); load it "
                      f"with the version that wrote it") from None
  config.lock()
  return config


def find_checkpoint(path: str, best: bool = False) -> tuple[str, int]:
  """(checkpoint directory, step) for a workdir, a checkpoints/best directory or a step."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise ConfigError(f"{path} does not exist; pass a workdir, its checkpoints directory or a "
                      f"step directory")
  if os.path.isdir(os.path.join(path, "state")):  # one step
    return os.path.dirname(path), int(os.path.basename(path))
  if os.path.isdir(os.path.join(path, "checkpoints")):  # a workdir
    path = os.path.join(path, "best" if best else "checkpoints")
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []
  if not steps:
    raise ConfigError(f"{path} holds no checkpoint; train first, or pass a workdir, its "
                      f"checkpoints directory or a step directory")
  return path, steps[-1]


def checkpoint_config(directory: str, step: int) -> ml_collections.ConfigDict:
  """The locked config that checkpoint `step` in `directory` was trained with."""
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  try:
    return config_from_dict(ckpt.read_config(step))
  finally:
    ckpt.close()


def layout_config(config: ml_collections.ConfigDict, num_devices: int,
                  mesh: dict[str, int] | None) -> ml_collections.ConfigDict:
  """A copy of `config` laid out on these devices: replicated unless `mesh` says otherwise."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update(mesh or {"data": -1, "fsdp": 1, "tensor": 1})
  config.batch_size = num_devices  # no batch is read; this only satisfies the layout checks
  methods.training_only_off(config)
  config.optim.grad_accum_steps = 1
  config.optim.warmup_steps = 0  # no update is made: the schedule (and its warnings) are moot
  config.init_from = config.init_from if lora.enabled(config) else ""  # a LoRA run's base
  config.compilation_cache_dir = ""
  config.lock()
  return config


def _locate(path: str, best: bool, scan_layers: bool):
  """(config, checkpoint directory, step, parameter reader) of a bigjax run or a Hugging Face
  model directory; nothing the size of the model is read yet."""
  if files.is_model_directory(path):
    config = convert.run_config(path, scan_layers)
    return config, os.path.abspath(path), 0, lambda abstract: convert.read_params(path, abstract)
  directory, step = find_checkpoint(path, best)
  config = checkpoint_config(directory, step)
  state = os.path.join(directory, str(step), "state")
  return config, directory, step, lambda abstract: checkpoint.restore_params(state, abstract)


def saved_config(path: str, best: bool = False) -> ml_collections.ConfigDict:
  """The config of the run (or Hugging Face model) in `path`, without reading its parameters:
  what configs/finetune.py starts a fine-tuning run from."""
  return _locate(path, best, scan_layers=True)[0]


def load(path: str, best: bool = False, devices=None, mesh: dict[str, int] | None = None,
         scan_layers: bool = True) -> LoadedRun:
  """The run in `path` (see the module docstring), its parameters on `devices` (default: all).

  `scan_layers` picks a Hugging Face model's layer layout; a bigjax run keeps its own.
  """
  devices = list(devices if devices is not None else jax.devices())
  config, directory, step, read = _locate(path, best, scan_layers)
  run = build.build(layout_config(config, len(devices), mesh), devices)
  params = read(run.checkpointed(run.abstract).params)
  if not run.saves_everything:  # a LoRA run's adapters: the base comes from its reference to it
    init = build.Programs(run.lower_init().compile(), None, None, 0.0)
    params = run.resumed(init, run.abstract.replace(params=params)).params
  return LoadedRun(config=config, model=run.task.model, params=params,
                   tokenizer=run.task.tokenizer, task=run.task, step=step, directory=directory)


def save(out: str, config: ml_collections.ConfigDict, step: int, params) -> str:
  """A run directory holding `params` alone (no optimizer state), which `load`, evaluation,
  serving and `init_from` read like any run's; returns its checkpoints directory."""
  workdir_lib.check_layout(out)
  directory = os.path.join(out, "checkpoints")
  if os.path.exists(directory):
    raise ConfigError(f"{out} already holds a run; choose a new directory")
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  try:
    ckpt.save(step, {"params": params}, {}, config.to_dict())
    ckpt.wait()
  finally:
    ckpt.close()
  return directory
