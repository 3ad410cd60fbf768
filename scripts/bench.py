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

config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
flags.DEFINE_integer("steps", 10, "steps per timing window")
flags.DEFINE_integer("rounds", 3, "timing windows; the fastest is reported")
flags.DEFINE_integer("warmup", 3, "untimed steps after the first")
flags.DEFINE_integer("top_ops", 0, "then profile one window and print where its time went, by "
                     "source line of the model, this many rows (0 = no profile)")


class TrainStepBench:
  """The config's real train step, ready to time: `seconds_per_step(n)` runs n steps."""

  def __init__(self, config):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from bigjax import optim, sharding, throughput, train
    from bigjax.config_checks import check_config
    from bigjax.tasks import TASKS

    start = time.perf_counter()
    train.use_compilation_cache(config.compilation_cache_dir)
    devices = jax.devices()
    mesh = sharding.make_mesh(check_config(config, len(devices), jax.process_count()), devices)
    self.task = task = TASKS[config.task](config, jax.process_index(), jax.process_count())
    tx, lr_schedule = optim.make_optimizer(config.optim, config.steps)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
      abstract, shardings, init = train.state_layout(task, tx, config, mesh)
      self.state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
      compile_start = time.perf_counter()
      self.step = train.compile_train_step(task, tx, lr_schedule, config, mesh, abstract,
                                           shardings)
      compile_seconds = time.perf_counter() - compile_start
      local = next(iter(task.train_data(config.batch_size // jax.process_count(), config.seed)))
      self.batch = sharding.global_batch(local, mesh)
      self.seconds_per_step(1)
    first_step_seconds = time.perf_counter() - start

    tokens = config.batch_size * config.seq_len
    self.flops_per_step = task.flops_per_example(abstract.params) * config.batch_size
    self.peak, peak_source = throughput.peak_flops_per_device(devices[0], jnp.dtype(config.dtype))
    self.info = {
        "device": devices[0].device_kind, "devices": len(devices), "dtype": config.dtype,
        "batch_size": config.batch_size, "seq_len": config.seq_len, "tokens_per_step": tokens,
        "params": sum(x.size for x in jax.tree.leaves(abstract.params)),
        "first_step_seconds": round(first_step_seconds, 2),
        "compile_seconds": round(compile_seconds, 2),
        "flops_per_token": round(self.flops_per_step / tokens),
        "mfu_against": peak_source,
        "memory_gib_per_device": round(
            throughput.memory_per_device(self.step)["total"] / 2**30, 3),
    }

  def seconds_per_step(self, n: int) -> float:
    import jax
    start = time.perf_counter()
    for _ in range(n):
      self.state, _ = self.step(self.state, self.batch)
    jax.block_until_ready(self.state)
    return (time.perf_counter() - start) / n

  def report(self, seconds: float) -> dict:
    from bigjax import throughput
    devices, tokens = self.info["devices"], self.info["tokens_per_step"]
    return {
        **self.info, "step_seconds": round(seconds, 5),
        "tokens_per_sec": round(tokens / seconds, 1),
        "tokens_per_sec_per_device": round(tokens / seconds / devices, 1),
        "mfu": round(throughput.mfu(self.flops_per_step, seconds, devices, self.peak), 4),
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
  f = flags.FLAGS
  bench = TrainStepBench(f.config)
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
  from bigjax.train import parse_flags
  app.run(main, flags_parser=parse_flags)
