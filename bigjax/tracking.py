"""Where metrics go: WORKDIR/metrics.jsonl always, TensorBoard and W&B by config. Process 0 only."""

import json
import os

import ml_collections


def flatten(config: ml_collections.ConfigDict) -> dict:
  """{"optim.lr": 1e-3, ...}: the dotted names sweeps and overrides use."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(name + ".", value)
      else:
        out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

  walk("", config)
  return out


class Tracker:
  def __init__(self, config: ml_collections.ConfigDict, workdir: str, active: bool = True):
    self.active = active
    self._tb = self._wandb = None
    if not active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if config.tracking.tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    if config.tracking.wandb != "disabled":
      self._wandb = _start_wandb(config, workdir)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      if self._tb:
        self._tb.add_scalar(name, value, step)
    if self._wandb:
      self._wandb.log(metrics, step=step)

  def write_text(self, step: int, name: str, text: str) -> None:
    if not self.active:
      return
    if self._tb:
      self._tb.add_text(name, text, step)
    if self._wandb:
      import wandb
      self._wandb.log({name: wandb.Html(f"<pre>{text}</pre>")}, step=step)

  def close(self) -> None:
    if not self.active:
      return
    self._jsonl.close()
    if self._tb:
      self._tb.close()
    if self._wandb:
      self._wandb.finish()


def _start_wandb(config, workdir):
  """A W&B run whose id lives in the workdir, so a resumed run continues the same W&B run."""
  import wandb

  id_file = os.path.join(workdir, "wandb_run_id")
  run_id = open(id_file).read().strip() if os.path.exists(id_file) else wandb.util.generate_id()
  with open(id_file, "w") as f:
    f.write(run_id)
  return wandb.init(project=config.tracking.project, id=run_id, resume="allow",
                    mode=config.tracking.wandb, dir=workdir, config=flatten(config))
