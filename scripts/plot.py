"""Curves of one or several runs, from their metrics.jsonl, into one PNG.

    python scripts/plot.py runs/a runs/b --metrics train/loss eval/loss --out curves.png
    python scripts/plot.py runs/sweep_lr/* --metrics eval/loss --out sweep_curves.png

One panel per metric, one line per run, against the step. A resumed run may have logged some
steps twice (after its last checkpoint, before it stopped); the later value of a step wins.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_curves(run_dir: str) -> dict[str, dict[int, float]]:
  """{metric: {step: value}} from RUN_DIR/metrics.jsonl."""
  curves = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a last line cut short by a kill
        continue
      step = record.pop("step")
      for name, value in record.items():
        curves.setdefault(name, {})[step] = value
  return curves


def plot(runs: dict[str, dict], metrics: list[str], out: str, log_y: bool = False) -> None:
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False,
                           layout="constrained")
  for ax, metric in zip(axes[0], metrics):
    for label, curves in runs.items():
      if metric in curves:
        steps = sorted(curves[metric])
        # A single point (e.g. one final eval) would be invisible as a line.
        ax.plot(steps, [curves[metric][s] for s in steps], label=label,
                marker="o" if len(steps) < 20 else None, markersize=3)
    ax.set_title(metric)
    ax.set_xlabel("step")
    if log_y:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="run directories (each holds metrics.jsonl)")
  parser.add_argument("--metrics", nargs="+", default=["train/loss", "eval/loss"])
  parser.add_argument("--out", default="curves.png", help="PNG file to write")
  parser.add_argument("--log_y", action="store_true", help="logarithmic y axis")
  args = parser.parse_args(argv)

  runs = {}
  for run_dir in args.runs:
    if os.path.isfile(run_dir) and len(args.runs) > 1:
      continue  # runs/sweep/* also matches files such as the sweep's sweep.png
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
      sys.exit(f"error: {run_dir} has no metrics.jsonl; pass run directories (--workdir of a run)")
    runs[os.path.basename(os.path.normpath(run_dir))] = read_curves(run_dir)
  logged = set().union(*(curves.keys() for curves in runs.values()))
  missing = [m for m in args.metrics if m not in logged]
  if missing:
    sys.exit(f"error: no run logged {', '.join(missing)}; these are logged: "
             f"{', '.join(sorted(logged))}")
  plot(runs, args.metrics, args.out, args.log_y)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
