"""`bigjax.load(path)`: a trained run's config, model, parameters and tokenizer, from Python.

    import bigjax
    run = bigjax.load("runs/gpt_tiny")                   # newest checkpoint; best=True: WORKDIR/best
    tokens_BxL = run.tokenizer.encode("def ")[None]
    logits_BxLxV, _ = run.model.apply({"params": run.params}, tokens_BxL)

`path` is a workdir, its `checkpoints` (or `best`) directory, or one step directory. Parameters
are read straight onto the available devices (replicated, or FSDP-sharded with `mesh`); the
optimizer state is never read. A LoRA run's checkpoint holds its adapters: the base is rebuilt
from the run's reference to it (init_from). A quantized run (bigjax.quantize) loads as integers.
`save` writes the parameters-only runs that `bigjax.lora merge` and `bigjax.quantize` produce.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from bigjax import build, checkpoint, config_checks
from bigjax.adapt import lora
from bigjax.config_checks import ConfigError
from bigjax.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  config: ml_collections.ConfigDict  # the run's own config, as it trained
  model: nn.Module  # the Flax module: model.apply({"params": params}, ...)
  params: Any  # restored onto the devices
  tokenizer: Any  # encode(str) -> ids, decode(ids) -> str; None for image and tabular tasks
  task: Task  # the objective, for its eval and decoding methods
  step: int  # the checkpoint's step
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


def layout_config(config: ml_collections.ConfigDict, num_devices: int,
                  mesh: dict[str, int] | None) -> ml_collections.ConfigDict:
  """A copy of `config` laid out on these devices: replicated unless `mesh` says otherwise."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update(mesh or {"data": -1, "fsdp": 1, "tensor": 1})
  config.batch_size = num_devices  # no batch is read; this only satisfies the layout checks
  config.optim.grad_accum_steps = 1
  config.init_from = config.init_from if lora.enabled(config) else ""  # a LoRA run's base
  config.compilation_cache_dir = ""
  config.lock()
  return config


def load(path: str, best: bool = False, devices=None,
         mesh: dict[str, int] | None = None) -> LoadedRun:
  """The run in `path` (see the module docstring), its parameters on `devices` (default: all)."""
  directory, step = find_checkpoint(path, best)
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  try:
    config = config_from_dict(ckpt.read_config(step))
  finally:
    ckpt.close()
  devices = list(devices if devices is not None else jax.devices())
  run = build.build(layout_config(config, len(devices), mesh), devices)
  params = checkpoint.restore_params(os.path.join(directory, str(step), "state"),
                                     run.checkpointed(run.abstract).params)
  if lora.enabled(config):  # adapters alone: the base comes from the run's reference to it
    init = build.Programs(run.lower_init().compile(), None, None, 0.0)
    params = run.resumed(init, run.abstract.replace(params=params)).params
  return LoadedRun(config=config, model=run.task.model, params=params,
                   tokenizer=run.task.tokenizer, task=run.task, step=step, directory=directory)


def save(out: str, config: ml_collections.ConfigDict, step: int, params) -> str:
  """A run directory holding `params` alone (no optimizer state), which `load`, evaluation,
  serving and `init_from` read like any run's; returns its checkpoints directory."""
  config_checks.check_workdir(out)
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
