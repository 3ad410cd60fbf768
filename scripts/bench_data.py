"""How fast the input pipeline delivers batches, next to how fast the train step consumes them.

    python scripts/bench_data.py [--config=configs/gpt2.py:small] [--workers=0,2] \
        [--config.data.source=shards --config.data.path=DIR]

Times `--batches` batches of the config's task pipeline alone (reading, packing, batching, as
the loop receives them on the host), once per value of `--workers` (data.workers: 0 = grain's
threads in this process), then the config's real train step (scripts/bench.py's, `--steps`
steps), and prints both rates in tokens per second with their ratio: the pipeline must stay far
ahead of the step (10x is the project's bar) or the accelerator waits for data. The default
shape is GPT-2 small, batch 16 x 1024 tokens. `--step=False` times the pipeline alone. A CPU
host without the memory for GPT-2 small's step at batch 16 times it at a smaller batch
(`--step_batch_size=2 --config.model.remat=full`); tokens/s hardly depends on the batch there.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

# GPT-2 small unless --config says otherwise. Given as a flag, before scripts/bench.py defines
# --config: config_flags reads the command line's overrides when the flag is defined.
if not any(arg.startswith("--config=") for arg in sys.argv[1:]):
  sys.argv.insert(1, "--config=configs/gpt2.py:small")

import bench  # noqa: E402  (scripts/bench.py: the train step as training runs it, and --config)

flags.FLAGS.set_default("steps", 2)  # a GPT-2 small step takes seconds on a CPU
flags.DEFINE_integer("batch_size", 16, "global batch (the config's own is overridden)")
flags.DEFINE_integer("batches", 50, "batches timed per pipeline setting")
flags.DEFINE_list("workers", ["0", "2"], "data.workers settings to time")
flags.DEFINE_bool("step", True, "also time the train step (compiles the model)")
flags.DEFINE_integer("step_batch_size", 0, "the train step's global batch (0 = --batch_size); "
                     "a host without the memory for the step at full batch times a smaller one")


def pipeline_tokens_per_second(config, batches: int) -> float:
  """Tokens per second the task's training iterator hands to the host, after two batches."""
  from bigjax import build

  task = build.make_task(config)
  iterator = iter(task.train_data(config.batch_size, config.seed))
  for _ in range(2):  # threads or worker processes start, the first reads are cold
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  return batches * batch["inputs"].size / seconds


def step_tokens_per_second(config, steps: int) -> float:
  step = bench.TrainStepBench(config)  # compiles, then runs one step
  return config.batch_size * config.seq_len / step.seconds_per_step(steps)


def main(argv) -> None:
  del argv
  config = flags.FLAGS.config
  config.batch_size = flags.FLAGS.batch_size
  result = {"config": {"task": config.task, "data.source": config.data.source,
                       "batch_size": config.batch_size, "seq_len": config.seq_len}}
  for workers in map(int, flags.FLAGS.workers):
    config.data.workers = workers
    rate = pipeline_tokens_per_second(config, flags.FLAGS.batches)
    result[f"pipeline_tokens_per_sec_workers_{workers}"] = round(rate)
  if flags.FLAGS.step:
    config.data.workers = 0
    config.batch_size = flags.FLAGS.step_batch_size or config.batch_size
    step = step_tokens_per_second(config, flags.FLAGS.steps)
    result["train_step"] = {"batch_size": config.batch_size, "remat": config.model.remat,
                            "tokens_per_sec": round(step, 1)}
    slowest = min(v for k, v in result.items() if k.startswith("pipeline_"))
    result["pipeline_over_step"] = round(slowest / step, 1)
  print(json.dumps(result))


if __name__ == "__main__":
  from bigjax import cli

  app.run(main, flags_parser=cli.parse_flags)
