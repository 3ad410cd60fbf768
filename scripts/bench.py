"""Steady-state training throughput of a config, as one JSON line.

    python scripts/bench.py --config=configs/gpt_tiny.py [--steps=20] [--config.dtype=bfloat16]

Builds exactly what bigjax.train builds (mesh, sharded state, compiled step), times `--steps`
steps after `--warmup` steps on one real batch, and prints tokens/s, step time and MFU. Compile
time is reported separately and excluded from the rest.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from bigjax import optim, sharding, throughput, train
  from bigjax.config_checks import check_config
  from bigjax.tasks import TASKS

  config = flags.FLAGS.config
  devices = jax.devices()
  mesh = sharding.make_mesh(check_config(config, len(devices), jax.process_count()), devices)
  task = TASKS[config.task](config, jax.process_index(), jax.process_count())
  tx, lr_schedule = optim.make_optimizer(config.optim, config.steps)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    abstract, shardings, init = train.state_layout(task, tx, config, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
    start = time.perf_counter()
    step = train.compile_train_step(task, tx, lr_schedule, config, mesh, abstract, shardings)
    compile_seconds = time.perf_counter() - start
    local = next(iter(task.train_data(config.batch_size // jax.process_count(), config.seed)))
    batch = sharding.global_batch(local, mesh)
    for _ in range(flags.FLAGS.warmup):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(flags.FLAGS.steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / flags.FLAGS.steps

  flops_per_step = task.flops_per_example(abstract.params) * config.batch_size
  peak, peak_source = throughput.peak_flops_per_device(devices[0], jnp.dtype(config.dtype))
  tokens = config.batch_size * config.seq_len
  print(json.dumps({
      "device": devices[0].device_kind, "devices": len(devices), "dtype": config.dtype,
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "step_seconds": round(seconds, 5), "tokens_per_sec": round(tokens / seconds, 1),
      "tokens_per_sec_per_device": round(tokens / seconds / len(devices), 1),
      "mfu": round(throughput.mfu(flops_per_step, seconds, len(devices), peak), 4),
      "mfu_against": peak_source, "compile_seconds": round(compile_seconds, 2),
      "flops_per_token": round(flops_per_step / tokens),
  }))


if __name__ == "__main__":
  from bigjax.train import parse_flags
  app.run(main, flags_parser=parse_flags)
