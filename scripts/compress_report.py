"""What compressing a trained model costs and saves, as one table.

    python scripts/compress_report.py --workdir=runs/gpt_tiny [--steps=100] [--tile=32]

Rows: the float run; int8 and int4 post-training quantization (bigjax.quantize); int4
quantization-aware, fine-tuned `--steps` steps from the run with fake-quantized weights, then
converted; 50% unstructured and 2:4 pruning, fine-tuned `--steps` steps from the run on the
gradual schedule; and, as their control, the float run fine-tuned the same steps and its int4
post-training quantization (fine-tunes continue at the learning rate the run ended with). Columns: eval
loss (the run's own eval batches), weights as stored (int4 counted at 4 bits; pruned weights are
stored dense), kernel sparsity, and greedy single-stream decoding speed (batch 1, KV cache, best
of 3 after a warm-up).

Every converted or fine-tuned run is written under --out (default WORKDIR_compress) and reused by
a rerun, so an interrupted report resumes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

flags.DEFINE_string("workdir", None, "the trained run")
flags.DEFINE_string("out", "", "where the variants are written (default: WORKDIR_compress)")
flags.DEFINE_integer("steps", 100, "fine-tuning steps of the quantization-aware and pruned runs")
flags.DEFINE_integer("tile", 32, "int4 tile: inputs per weight scale")
flags.DEFINE_integer("new_tokens", 128, "tokens decoded per timing")
flags.mark_flags_as_required(["workdir"])


def fine_tune(workdir: str, out: str, steps: int, overrides: dict) -> str:
  """`out`, trained `steps` steps from `workdir` with `overrides` (resumed if it exists)."""
  import ml_collections

  from bigjax import train
  from bigjax.load import load

  config = ml_collections.ConfigDict(load(workdir).config.to_dict())
  config.update_from_flattened_dict({  # continuing at the learning rate the run ended with
      "init_from": os.path.abspath(workdir), "steps": steps, "eval_every": 0,
      "checkpoint_every": 0, "optim.lr": config.optim.lr * config.optim.min_lr_ratio,
      "optim.schedule": "constant", "optim.warmup_steps": 0, "tracking.progress": False,
      "tracking.tensorboard": False, "sample.prompt": "", **overrides})
  config.lock()
  train.train_and_evaluate(config, out)
  return out


def converted(workdir: str, out: str, weights: str, tile: int) -> str:
  from bigjax.adapt import quantize
  if not os.path.isdir(out):
    quantize.quantize_run(workdir, out, weights, tile)
  return out


def measure_run(workdir: str, new_tokens: int) -> dict:
  import jax
  import numpy as np

  from bigjax.adapt import measure, quantize
  from bigjax.load import load

  run = load(workdir)
  kernels = [np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(run.params)
             if getattr(path[-1], "key", None) == "kernel"]
  zeros = sum(int((k == 0).sum()) for k in kernels) / max(1, sum(k.size for k in kernels))
  return {"loss": measure.eval_loss(run.config, run.params),
          "mib": quantize.weight_bits(run.params) / 8 / 2**20, "sparsity": zeros,
          "tokens_per_sec": measure.decode_tokens_per_second(
              run.model, run.params, run.tokenizer, run.config.sample.prompt or " ",
              new_tokens)}


def main(argv) -> None:
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  f = flags.FLAGS
  w, out, steps = f.workdir, f.out or f.workdir.rstrip("/") + "_compress", f.steps
  pruning = {"prune.sparsity": 0.5, "prune.schedule": "gradual",
             "prune.end_step": 3 * steps // 4, "prune.every": max(1, steps // 20)}
  rows = {
      "float": w,
      "int8 (PTQ)": converted(w, f"{out}/int8", "int8", 0),
      f"int4, tile {f.tile} (PTQ)": converted(w, f"{out}/int4", "int4", f.tile),
      f"float, +{steps} steps": fine_tune(w, f"{out}/float", steps, {}),
      f"its int4, tile {f.tile} (PTQ)": converted(f"{out}/float", f"{out}/float_int4", "int4",
                                                   f.tile),
      f"int4, tile {f.tile} (QAT, +{steps} steps)": converted(
          fine_tune(w, f"{out}/qat", steps, {"quant.weights": "int4", "quant.tile": f.tile}),
          f"{out}/qat_int4", "int4", f.tile),
      f"50% unstructured (+{steps} steps)": fine_tune(w, f"{out}/unstructured", steps, pruning),
      f"2:4 (+{steps} steps)": fine_tune(w, f"{out}/2of4", steps,
                                         {**pruning, "prune.pattern": "2:4"}),
  }
  print(f"\n{w}: eval loss, weights as stored, kernel sparsity, decode tokens/s (batch 1)\n")
  print("| model | eval loss | weights (MiB) | sparsity | decode tokens/s |")
  print("| --- | --- | --- | --- | --- |")
  for name, run in rows.items():
    m = measure_run(run, f.new_tokens)
    print(f"| {name} | {m['loss']:.4f} | {m['mib']:.2f} | {m['sparsity']:.0%} | "
          f"{m['tokens_per_sec']:.0f} |", flush=True)


if __name__ == "__main__":
  from bigjax import cli
  app.run(main, flags_parser=cli.parse_flags)
