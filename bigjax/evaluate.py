"""Evaluates a trained run's newest or best checkpoint, with the run's own task and eval step.

    python -m bigjax.evaluate --workdir=runs/digits_mlp [--best] [--config.eval_steps=50]
    python -m bigjax.evaluate --workdir=runs/seq2seq_reverse --config.seq2seq.beam_size=1

The run is rebuilt by `bigjax.build` from the config stored in its checkpoint, as training built
it, and evaluated by the loop's own `bigjax.train.evaluate`: the numbers are those training logs
at that step. `--config.KEY=VALUE` changes the stored config for this evaluation only: the number
of batches (eval_steps) and their size (batch_size), the decoding (seq2seq.beam_size,
seq2seq.length_penalty), where the data is (data.tfds_dir). Whatever mesh trained the run, the
parameters are read onto every device here, data-parallel; `--config.mesh.fsdp=-1` shards them.

It prints the metrics and writes them (metrics.jsonl) with the task's images (confusion matrix,
ROC curves) under WORKDIR/evaluate/checkpoints_STEP (best_STEP with --best), or --out.
"""

import os
import sys

import jax
import ml_collections

from bigjax import build, checkpoint, cli, train, tracking
from bigjax.config_checks import ConfigError
from bigjax.load import checkpoint_config, find_checkpoint
from bigjax.tasks.base import Report


def eval_config(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of a run's config to evaluate with: laid out data-parallel on the devices here, and
  without what only training reads (accumulation, init_from, trackers, profiles)."""
  config = ml_collections.ConfigDict(saved.to_dict())
  config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
  config.optim.grad_accum_steps = 1
  config.optim.warmup_steps = 0  # (a warmup longer than the run would warn of the schedule)
  config.init_from = ""
  config.profile_steps = ""
  config.tracking.wandb = "disabled"
  config.tracking.tensorboard = False
  config.lock()
  return config


def evaluate(config: ml_collections.ConfigDict, directory: str, step: int,
             devices=None) -> Report:
  """The eval metrics and images of checkpoint `step` in `directory`, evaluated with `config`."""
  run = build.build(config, devices)
  eval_step = run.lower_eval_step().compile()
  params = checkpoint.restore_params(os.path.join(directory, str(step), "state"),
                                     run.abstract.params)
  return train.evaluate(run, eval_step, params)


def output_directory(directory: str, step: int) -> str:
  """WORKDIR/evaluate/checkpoints_STEP for WORKDIR/checkpoints (best_STEP for WORKDIR/best)."""
  return os.path.join(os.path.dirname(directory), "evaluate",
                      f"{os.path.basename(directory)}_{step}")


def write(config: ml_collections.ConfigDict, report: Report, step: int, out: str) -> None:
  """metrics.jsonl and images/ in `out`, laid out as a training run lays out its own."""
  tracker = tracking.Tracker(config, out, active=jax.process_index() == 0)
  try:
    tracker.write(step, report.scalars)
    for name, image in report.images.items():
      tracker.write_image(step, name, image)
  finally:
    tracker.close()


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every restore at INFO
  FLAGS = flags.FLAGS
  directory, step = find_checkpoint(FLAGS.workdir, FLAGS.best)
  out = FLAGS.out or output_directory(directory, step)
  stored = tracking.flatten(eval_config(checkpoint_config(directory, step)))
  changed = {k: v for k, v in tracking.flatten(FLAGS.config).items() if stored[k] != v}
  if changed and jax.process_index() == 0:
    print("evaluating with " + ", ".join(f"{k}={v} (trained with {stored[k]})"
                                         for k, v in changed.items()), flush=True)
  try:
    report = evaluate(FLAGS.config, directory, step)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  write(FLAGS.config, report, step, out)
  if jax.process_index() == 0:
    scores = ", ".join(f"{k} {v:.4f}" for k, v in report.scalars.items() if k.count("/") < 2)
    print(f"{directory} step {step}: {scores}\nwrote {out}", flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """--workdir and --best first; then the run's stored config becomes --config, so that
  --config.KEY=VALUE overrides it as it would a config file."""
  from absl import flags
  from ml_collections import config_flags

  try:
    flags.FLAGS(argv, known_only=True)  # --config.* cannot be read before --config exists
    if not flags.FLAGS.workdir:
      raise ConfigError("--workdir=WORKDIR is required: the run to evaluate")
    directory, step = find_checkpoint(flags.FLAGS.workdir, flags.FLAGS.best)
    config = eval_config(checkpoint_config(directory, step))
    # config_flags reads the --config.KEY=VALUE arguments here, so a typo fails here.
    config_flags.DEFINE_config_dict("config", config, "the run's own config, from its checkpoint")
  except Exception as e:  # a bad path, a bad override
    cli.fail(cli.one_line(e, argv))
  return cli.parse_flags(argv)


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("workdir", None, "the run: a workdir, its checkpoints dir or a step dir")
  flags.DEFINE_bool("best", False, "evaluate WORKDIR/best (early_stop.metric's best step)")
  flags.DEFINE_string("out", "", "where metrics.jsonl and images go "
                      "(default WORKDIR/evaluate/checkpoints_STEP)")
  app.run(main, flags_parser=parse_flags)
