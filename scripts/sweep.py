"""Runs a W&B sweep file's grid or random search on this machine: parallel processes, no server.

    python scripts/sweep.py --sweep=configs/sweeps/gpt_tiny_lr.yaml --config=configs/gpt_tiny.py \
        --workdir=runs/sweep_lr --workers=2 [--count=N] [--seed=0] [--config.steps=200 ...]

Each run is `python -m bigjax.train` in WORKDIR/<its overrides> (e.g. WORKDIR/optim.lr=0.001),
its output in train.log there; `--config.*` flags given here apply to every run and win over the
sweep file's values of the same key (`--config.steps=20` shortens every run). A run is finished
when its metrics.jsonl holds the sweep's metric at the final step. Rerunning the same command
skips finished runs and resumes the others from their checkpoints; Ctrl-C (or SIGTERM) stops the
runs, each saving a checkpoint first. At the end it prints the runs sorted by the metric and
draws WORKDIR/sweep.png; `python scripts/plot.py WORKDIR/*` draws their curves.

The same file works with `wandb sweep FILE` + `wandb agent ID` (see bigjax/sweeps.py), which is
also the way to run `method: bayes`: choosing the next point needs the W&B sweep server.
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bigjax import cli, config_checks, sweeps, tracking  # noqa: E402

flags.DEFINE_string("sweep", None, "W&B sweep file (YAML)", required=True)
config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
flags.DEFINE_string("workdir", None, "each run gets a directory under this one", required=True)
flags.DEFINE_integer("workers", 1, "runs trained at the same time", lower_bound=1)
flags.DEFINE_integer("count", None, "runs of a random sweep (default: the file's run_cap)",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "seed of a random sweep's draws")
FLAGS = flags.FLAGS


def plan(sweep: sweeps.Sweep, count: int | None, seed: int) -> list[tuple[str, dict]]:
  """(directory name, overrides) of every run of the sweep, in order."""
  if sweep.method == "bayes":
    raise sweeps.SweepError("method: bayes needs the W&B sweep server: run `wandb sweep FILE` "
                            "and then `wandb agent SWEEP_ID`; this runner does grid and random")
  count = count or sweep.run_cap
  # Runs are named by what varies between them; `value:` constants are the same in all.
  name = lambda o: sweeps.run_name({k: v for k, v in o.items() if "value" not in sweep.parameters[k]})
  if sweep.method == "grid":
    runs = sweeps.grid(sweep.parameters)[:count]
    names = [name(o) for o in runs]
    if len(set(names)) < len(names):
      raise sweeps.SweepError("two grid points share a name (values equal to 4 significant "
                              "digits); make the values distinct")
    return list(zip(names, runs))
  if not count:
    raise sweeps.SweepError("a random sweep needs a number of runs: pass --count=N or set run_cap")
  # Numbered: two draws of a categorical parameter can repeat and must still be two runs.
  runs = sweeps.random(sweep.parameters, count, seed)
  return [(f"{i:03d}-{name(o)}", o) for i, o in enumerate(runs)]


def final_metric(run_dir: str, metric: str, steps: int) -> float | None:
  """`metric` as logged at the final step, or None if the run has not got there."""
  value = None
  try:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a last line cut short by a kill
          continue
        if record.get("step") == steps and metric in record:
          value = record[metric]
  except FileNotFoundError:
    pass
  return value


class Runner:
  """Starts runs as subprocesses; `stop` asks every live one to save and exit."""

  def __init__(self, base_args: list[str], cli_overrides: list[str], workers: int):
    self.base_args, self.cli_overrides = base_args, cli_overrides
    self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    if workers > 1:  # runs share each accelerator: split its memory, not 75% to the first one
      self.env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / workers:.2f}")
    self.stopping = False
    self._live = set()
    self._lock = threading.Lock()

  def run(self, run_dir: str, overrides: dict) -> int:
    """Trains one run to the end (or until stopped); returns its exit code."""
    os.makedirs(run_dir, exist_ok=True)
    # The command line's overrides come last: absl applies them in order, so they win.
    command = [sys.executable, "-m", "bigjax.train", f"--workdir={run_dir}", *self.base_args,
               *(f"--config.{k}={v}" for k, v in overrides.items()), *self.cli_overrides]
    with open(os.path.join(run_dir, "train.log"), "a") as log, self._lock:
      if self.stopping:
        return -signal.SIGTERM
      log.write(" ".join(command) + "\n")
      log.flush()
      process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
      self._live.add(process)
    code = process.wait()
    with self._lock:
      self._live.discard(process)
    return code

  def stop(self) -> None:
    with self._lock:
      self.stopping = True
      for process in self._live:
        process.terminate()  # SIGTERM: bigjax.train saves a checkpoint and exits


def main(argv) -> None:
  del argv
  try:
    config_checks.check_values(FLAGS.config)  # what every run shares, checked once up front
    sweep = sweeps.load(FLAGS.sweep)
    runs = plan(sweep, FLAGS.count, FLAGS.seed)
    known = tracking.flatten(FLAGS.config)
    for name in sweep.parameters:
      if name not in known:
        raise sweeps.SweepError(f"sweep parameter {name!r} is not a config key of "
                                f"{FLAGS['config'].config_filename}; see configs/base.py")
  except (sweeps.SweepError, config_checks.ConfigError) as e:
    cli.fail(str(e))

  # The config file and its --config.* overrides go to every run, as typed here.
  base_args = [f"--config={FLAGS['config'].config_filename}", "--config.tracking.progress=False"]
  cli_overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  cli_keys = {a[len("--config."):].split("=", 1)[0] for a in cli_overrides}
  for key in sorted(cli_keys & set(sweep.parameters)):
    print(f"--config.{key} on the command line replaces the sweep's {key} in every run",
          flush=True)
  runner = Runner(base_args, cli_overrides, FLAGS.workers)
  results = {}  # run name -> metric value, or a word saying why there is none

  def steps_of(overrides):
    """The run's final step: the command line's, else the sweep's, else the config file's."""
    if "steps" in cli_keys:
      return FLAGS.config.steps
    return int(overrides.get("steps", FLAGS.config.steps))

  todo = []
  for name, overrides in runs:
    value = final_metric(os.path.join(FLAGS.workdir, name), sweep.metric, steps_of(overrides))
    if value is None:
      todo.append((name, overrides))
    else:
      results[name] = value
  print(f"sweep {FLAGS.sweep}: {sweep.method}, {len(runs)} runs, {sweep.metric} "
        f"({sweep.goal}); {len(results)} finished before, {len(todo)} to run with "
        f"{FLAGS.workers} worker(s) in {FLAGS.workdir}", flush=True)

  def train(name, overrides):
    start = time.time()
    run_dir = os.path.join(FLAGS.workdir, name)
    code = runner.run(run_dir, overrides)
    value = final_metric(run_dir, sweep.metric, steps_of(overrides))
    if value is not None:
      results[name] = value
      outcome = f"{sweep.metric} {value:.4g}"
    elif runner.stopping:
      results[name] = outcome = "stopped"
    elif code == 0:
      results[name] = outcome = f"no {sweep.metric} at step {steps_of(overrides)}"
    else:
      results[name] = outcome = f"failed (exit {code}, see {run_dir}/train.log)"
    print(f"[{len(results)}/{len(runs)}] {name}: {outcome} ({time.time() - start:.0f}s)",
          flush=True)

  previous = signal.signal(signal.SIGTERM, _raise_interrupt)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=FLAGS.workers)
  try:
    for future in [pool.submit(train, name, o) for name, o in todo]:
      future.result()
  except KeyboardInterrupt:
    print("stopping: every live run saves a checkpoint; rerun the same command to resume",
          flush=True)
    runner.stop()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    signal.signal(signal.SIGTERM, previous)

  ranked = report(runs, results, sweep)
  if ranked:
    plot(ranked, sweep, os.path.join(FLAGS.workdir, "sweep.png"))
  if len(ranked) < len(runs):
    sys.exit(1)


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt


def report(runs, results, sweep) -> list[tuple[str, float]]:
  """Prints every run, best first, then the ones without a value; returns the ranked ones."""
  ranked = sorted(((n, v) for n, v in results.items() if not isinstance(v, str)),
                  key=lambda item: item[1], reverse=sweep.goal == "maximize")
  # One column per parameter that varies; the fixed ones are the same in every row.
  overrides = dict(runs)
  varying = [k for k in sweep.parameters if len({repr(o[k]) for o in overrides.values()}) > 1]
  header = [sweep.metric, *varying, "run"]
  rows = [[f"{value:.4g}", *(str(overrides[name][k]) for k in varying), name]
          for name, value in ranked]
  rows += [[results.get(name, "not run"), *(str(o[k]) for k in varying), name]
           for name, o in runs if isinstance(results.get(name, "not run"), str)]
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  print()
  for row in [header, *rows]:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
  return ranked


def plot(ranked, sweep, path) -> None:
  """A bar per run, best at the top."""
  import matplotlib
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt

  names, values = zip(*ranked)
  fig, ax = plt.subplots(figsize=(8, 1 + 0.35 * len(names)), layout="constrained")
  bars = ax.barh(range(len(names)), values, color="tab:blue")
  ax.bar_label(bars, fmt="%.4g", padding=3, fontsize=8)
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel(f"{sweep.metric} ({sweep.goal})")
  ax.set_title(os.path.basename(FLAGS.sweep))
  margin = 0.1 * (max(values) - min(values) or abs(max(values)) or 1)
  ax.set_xlim(min(values) - margin, max(values) + margin)  # zoomed in, so differences show
  fig.savefig(path, dpi=120)
  plt.close(fig)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
