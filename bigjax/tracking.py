"""Where a run's observations go: metrics, text, images, a profile. Process 0 only.

- WORKDIR/metrics.jsonl, always: one JSON line per log, read by scripts/plot.py and scripts/sweep.py.
- TensorBoard under WORKDIR/tb (`tracking.tensorboard`): scalars, text, images, the config.
- Weights & Biases (`tracking.wandb`): the config as dotted keys, the devices and versions, the
  parameter count, metrics, text, images, and optionally the final checkpoint as an artifact.
- A `jax.profiler` trace of `profile_steps` under WORKDIR/profile, for TensorBoard's profile tab
  (`tensorboard --logdir WORKDIR`) or https://ui.perfetto.dev (the perfetto_trace.json.gz file).

A resumed run redoes the steps after its checkpoint: metrics.jsonl drops the lines it had past
that step, and TensorBoard is told to purge them, so every step appears once.

W&B's files go under WORKDIR/wandb/, or under $WANDB_DIR/wandb/ when WANDB_DIR is set. A resumed
run continues the same W&B run: its id is kept in WORKDIR/wandb_run_id. Offline, each resumption
is a directory of its own under that wandb/ directory with that id, and
`wandb sync WORKDIR/wandb/offline-run-*` uploads them, in order, into the one run.
"""

import html
import json
import math
import os
import secrets

import jax
import ml_collections
import numpy as np

from bigjax import multihost
from bigjax.config_checks import ConfigError

WANDB_MODES = ("disabled", "offline", "online")


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


def json_row(line: str) -> dict | None:
  """One metrics.jsonl line, or None for a line a killed run left half-written."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return None
  return row if isinstance(row, dict) and "step" in row else None


def drop_rows_after(path: str, step: int) -> None:
  """Rewrites metrics.jsonl without the rows past `step` (and any line a kill cut short)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if (row := json_row(line)) and row["step"] <= step]
  if len(kept) < len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)  # a kill while rewriting leaves the old file whole


def final_metrics(workdir: str, step: int) -> dict:
  """What a finished run reported, read back from its metrics.jsonl (the last value of each)."""
  final = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for row in map(json_row, f):
        if row and row["step"] <= step:
          final |= {k: v for k, v in row.items() if k != "step"}
  return final


def system_info() -> dict:
  """What the run ran on; slash-named so it never reads as a config key."""
  return {"system/device_kind": jax.devices()[0].device_kind,
          "system/device_count": jax.device_count(),
          "system/process_count": jax.process_count(),
          "system/jax_version": jax.__version__}


def check_wandb(config: ml_collections.ConfigDict) -> None:
  """Fails before anything compiles when W&B cannot start as configured."""
  mode = config.tracking.wandb
  if mode not in WANDB_MODES:
    raise ConfigError(f"tracking.wandb={mode!r} is unknown; use one of {', '.join(WANDB_MODES)}")
  if mode != "online":
    return

  def logged_in():
    import wandb
    # Reads WANDB_API_KEY, W&B's settings files and ~/.netrc; verify=False stays off the network.
    if not wandb.login(prompt=False, verify=False):
      raise ConfigError("tracking.wandb=online needs a W&B API key: set WANDB_API_KEY or run "
                        "`wandb login`, or use --config.tracking.wandb=offline")

  multihost.on_primary(logged_in)  # only process 0 logs, but every process learns the outcome


def profile_window(spec: str) -> tuple[int, int] | None:
  """Reads `profile_steps`: "10,13" -> (10, 13), the first and last step traced; "" -> None."""
  if not spec:
    return None
  parts = spec.split(",")
  try:
    first, last = int(parts[0]), int(parts[-1])
  except ValueError:
    first = last = 0
  if len(parts) > 2 or not 1 <= first <= last:
    raise ConfigError(f"profile_steps={spec!r} is not FIRST,LAST with 1 <= FIRST <= LAST; "
                      f"use e.g. --config.profile_steps=10,13")
  return first, last


class Tracker:
  def __init__(self, config: ml_collections.ConfigDict, workdir: str, active: bool = True,
               params=None, start_step: int = 0):
    """`params`: the parameter tree (arrays or ShapeDtypeStructs), counted for the run summary;
    `start_step`: the step a resumed run continues from (what was logged after it is redone)."""
    self.active = active
    self._workdir = workdir
    self._profile = profile_window(config.profile_steps)
    self._tracing = False
    self._upload_checkpoint = config.tracking.wandb_checkpoint
    self._tb = self._wandb = None
    if not active:
      return
    info = system_info()
    if params is not None:
      info["num_params"] = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    os.makedirs(workdir, exist_ok=True)
    drop_rows_after(os.path.join(workdir, "metrics.jsonl"), start_step)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if config.tracking.tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)
      rows = "\n".join(f"| {k} | {v} |" for k, v in (flatten(config) | info).items())
      self._tb.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)
    if config.tracking.wandb != "disabled":
      self._wandb = _start_wandb(config, workdir, info)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    if self._tb:
      for name, value in metrics.items():
        self._tb.add_scalar(name, value, step)
    if self._wandb:
      self._wandb.log(metrics, step=step)

  def write_text(self, step: int, name: str, text: str) -> None:
    if not self.active:
      return
    if self._tb:
      # TensorBoard renders Markdown: indenting every line makes a code block, shown verbatim.
      self._tb.add_text(name, "\n".join("    " + line for line in text.splitlines()), step)
    if self._wandb:
      import wandb
      self._wandb.log({name: wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

  def write_image(self, step: int, name: str, image) -> None:
    """`image`: an HxWxC uint8 array (C = 1, 3 or 4), or the path of a PNG or JPEG file."""
    if not self.active:
      return
    pixels_HxWxC = _image_array(name, image)
    # Like metrics.jsonl, a PNG file always: WORKDIR/images/eval_roc_step500.png.
    from PIL import Image
    os.makedirs(os.path.join(self._workdir, "images"), exist_ok=True)
    png = os.path.join(self._workdir, "images", f"{name.replace('/', '_')}_step{step}.png")
    Image.fromarray(np.squeeze(pixels_HxWxC, -1) if pixels_HxWxC.shape[-1] == 1
                    else pixels_HxWxC).save(png)
    if self._tb:
      self._tb.add_image(name, pixels_HxWxC, step, dataformats="HWC")
    if self._wandb:
      import wandb
      # W&B takes grayscale as HxW.
      pixels = pixels_HxWxC[..., 0] if pixels_HxWxC.shape[-1] == 1 else pixels_HxWxC
      self._wandb.log({name: wandb.Image(pixels)}, step=step)

  def write_checkpoint(self, step: int, directory: str) -> None:
    """Uploads the checkpoint in `directory` as a W&B model artifact if `tracking.wandb_checkpoint`."""
    if not (self.active and self._wandb and self._upload_checkpoint):
      return
    import wandb
    artifact = wandb.Artifact(f"checkpoint-{self._wandb.id}", type="model",
                              metadata={"step": step})
    artifact.add_dir(directory)
    self._wandb.log_artifact(artifact, aliases=["latest", f"step_{step}"])

  def profiled(self, train_step, first_step: int):
    """`train_step`, tracing steps FIRST..LAST of `profile_steps` with jax.profiler.

    `first_step` is the step number of the first call (a resumed run starts past 1).
    """
    if not (self.active and self._profile):
      return train_step
    first, last = self._profile
    step = first_step - 1

    def traced_step(state, batch):
      nonlocal step
      step += 1
      if step == first:
        jax.profiler.start_trace(os.path.join(self._workdir, "profile"),
                                 create_perfetto_trace=True)
        self._tracing = True
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        out = train_step(state, batch)
      if step == last and self._tracing:
        jax.block_until_ready(out)  # the trace should hold the device work, not just its launch
        self._stop_trace()
      return out

    return traced_step

  def close(self) -> None:
    if not self.active:
      return
    if self._tracing:  # the run stopped inside the window: keep what was traced
      self._stop_trace()
    self._jsonl.close()
    if self._tb:
      self._tb.close()
    if self._wandb:
      self._wandb.finish()

  def _stop_trace(self):
    jax.profiler.stop_trace()
    self._tracing = False
    print(f"profile of steps {self._profile[0]}..{self._profile[1]} written to "
          f"{self._workdir}/profile: open with `tensorboard --logdir {self._workdir}` or the "
          f"perfetto_trace.json.gz file in https://ui.perfetto.dev", flush=True)


def _image_array(name: str, image) -> np.ndarray:
  if isinstance(image, (str, os.PathLike)):
    from PIL import Image
    with Image.open(image) as f:
      image = np.asarray(f.convert("RGBA" if "A" in f.getbands() else "RGB"))
  pixels = np.asarray(image)
  if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
    raise ValueError(f"write_image({name!r}): expected an HxWxC uint8 array with C in 1, 3, 4 or "
                     f"an image file path, got shape {pixels.shape} dtype {pixels.dtype}")
  return pixels


def _start_wandb(config, workdir, info):
  """A W&B run whose id lives in the workdir, so a resumed run continues the same W&B run.

  Under `wandb agent` the agent has chosen the id (WANDB_RUN_ID) and the sweep's values.
  """
  import wandb

  id_file = os.path.join(workdir, "wandb_run_id")
  if os.path.exists(id_file):
    with open(id_file) as f:
      run_id = f.read().strip()
  else:
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)  # W&B ids: [a-z0-9]+
    with open(id_file, "w") as f:
      f.write(run_id)
  return wandb.init(project=config.tracking.project, id=run_id, resume="allow",
                    mode=config.tracking.wandb, dir=os.environ.get("WANDB_DIR", workdir),
                    config=flatten(config) | info,
                    settings=wandb.Settings(quiet=True))  # the run's address, not a summary table
