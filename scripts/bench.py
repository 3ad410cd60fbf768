"""Steady-state training throughput of a config, as one JSON line.

    python scripts/bench.py --config=configs/gpt_tiny.py [--steps=20] [--config.dtype=bfloat16]

Builds exactly what bigjax.train builds (mesh, sharded state, compiled step) and times `--steps`
steps after `--warmup` steps on one real batch, best of `--rounds` timing windows (a busy host
only ever makes a window slower). Prints tokens/s, step time, MFU, the time from nothing to the
first finished step (initialisation + compilation + one step: what a researcher waits for), and
the compiler's peak memory per device.
"""

import collections
import glob
import itertools
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bigjax import throughput  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
flags.DEFINE_integer("steps", 10, "steps per timing window", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "timing windows; the fastest is reported", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "untimed steps after the first", lower_bound=0)
flags.DEFINE_enum("data", "fixed", ["fixed", "stream"], "one batch over and over, or a fresh "
                  "batch from the task's pipeline every step")
flags.DEFINE_integer("prefetch", 2, "with --data=stream: batches prepared ahead on a thread "
                     "(0 = on the loop's thread, as without prefetching)", lower_bound=0)
flags.DEFINE_integer("top_ops", 0, "then profile one window and print where its time went, by "
                     "source line of the model, this many rows (0 = no profile)", lower_bound=0)


class TrainStepBench:
  """The config's real train step, ready to time: `seconds_per_step(n)` runs n steps.

  `data="fixed"` feeds one batch over and over (the step alone); `data="stream"` draws every
  step's batch from the task's pipeline as the loop does, through the loop's `Prefetcher` when
  `prefetch` > 0, or on the loop's own thread when it is 0 (to see what prefetching hides).
  """

  def __init__(self, config, data: str = "fixed", prefetch: int = 2):
    import jax

    from bigjax import build
    from bigjax.data.prefetch import Prefetcher

    start = time.perf_counter()
    self.run = run = build.build(config)
    self.task = run.task
    programs = run.compile()
    self.step, self.state = programs.train_step, run.fresh_state(programs)
    local = iter(run.task.train_data(run.local_batch_size, config.seed))
    if data == "fixed":
      self.batches = itertools.repeat(run.global_batch(next(local)))
    elif prefetch:
      self.batches = Prefetcher(local, run.global_batch, size=prefetch)
    else:
      self.batches = (run.global_batch(batch) for batch in local)
    self.seconds_per_step(1)
    first_step_seconds = time.perf_counter() - start

    unit, count = run.units_per_step
    self.peak, peak_source = throughput.peak_flops_per_device(run.devices[0],
                                                              jax.numpy.dtype(config.dtype))
    self.info = {
        "device": run.devices[0].device_kind, "devices": len(run.devices),
        "dtype": config.dtype, "batch_size": config.batch_size, "seq_len": config.seq_len,
        "data": data if data == "fixed" else f"{data}, prefetch {prefetch}",
        f"{unit}_per_step": count, "params": run.num_params,
        "first_step_seconds": round(first_step_seconds, 2),
        "compile_seconds": round(programs.compile_seconds, 2),
        f"flops_per_{unit.rstrip('s')}": round(run.flops_per_step / count),
        "mfu_against": peak_source,
        "memory_gib_per_device": round(
            throughput.memory_per_device(self.step)["total"] / 2**30, 3),
    }

  def seconds_per_step(self, n: int) -> float:
    import jax
    start = time.perf_counter()
    for _ in range(n):
      self.state, _ = self.step(self.state, next(self.batches))
    jax.block_until_ready(self.state)
    return (time.perf_counter() - start) / n

  def report(self, seconds: float) -> dict:
    unit, count = self.run.units_per_step
    devices = self.info["devices"]
    return {
        **self.info, "step_seconds": round(seconds, 5),
        f"{unit}_per_sec": round(count / seconds, 1),
        f"{unit}_per_sec_per_device": round(count / seconds / devices, 1),
        "mfu": round(throughput.mfu(self.run.flops_per_step, seconds, devices, self.peak), 4),
    }


def time_by_source(bench: TrainStepBench, steps: int) -> list[tuple[float, str]]:
  """(ms per step, source) for the ops of `steps` traced steps, slowest first.

  Trace events carry the names of compiled HLO ops; the HLO's metadata names the model code
  each came from (`transpose(jvp(Decoder))/layer_3/mlp/up/dot_general` is the backward pass of
  layer 3's MLP up-projection). Layers are folded together. Ops that run concurrently each count
  their own time, so the column can add up to more than the step.
  """
  import jax
  source = {}
  for line in bench.step.as_text().splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = .*?op_name=\"([^\"]+)\"", line)
    if match:
      name = re.sub(r"layer_\d+", "layer_*", match.group(2)).removeprefix("jit(train_step)/")
      source[match.group(1)] = re.sub(r"cond/branch_\d+_fun/", "", name)  # platform_dependent
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      bench.seconds_per_step(steps)
    (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  micros = collections.Counter()
  for event in events:
    name = event.get("name", "").removeprefix("end: ")
    if event.get("ph") == "X" and name in source:
      micros[source[name]] += event["dur"]
  return [(us / steps / 1e3, name) for name, us in micros.most_common()]


def main(argv):
  del argv
  from bigjax import cli, console
  console.quiet()
  f = flags.FLAGS
  with cli.one_line_errors():  # a config that cannot run (a mesh the devices do not fill)
    bench = TrainStepBench(f.config, f.data, f.prefetch)
  if f.warmup:
    bench.seconds_per_step(f.warmup)
  best = min(bench.seconds_per_step(f.steps) for _ in range(f.rounds))
  print(json.dumps(bench.report(best)))
  if f.top_ops:
    rows = time_by_source(bench, f.steps)
    print(f"{'ms/step':>8}  source ({sum(ms for ms, _ in rows):.0f} ms/step in all ops)")
    for ms, name in rows[:f.top_ops]:
      print(f"{ms:8.2f}  {name}")


if __name__ == "__main__":
  from bigjax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
