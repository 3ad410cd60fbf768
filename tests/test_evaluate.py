"""python -m bigjax.evaluate: a trained run's checkpoint, evaluated by its own task and eval step,
gives the numbers training logged at that step, for a language model, a classifier and a seq2seq
model; overrides (eval_steps, decoding) apply and are said; bad input is one line."""

import json
import os
import subprocess
import sys

import jax
import pytest

from bigjax import evaluate, train
from bigjax.load import checkpoint_config, find_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASKS = {
    "lm": {},
    "classify": {"task": "classify", "data.source": "sklearn", "data.name": "digits",
                 "model.name": "mlp", "model.hidden": (16,), "batch_size": 16},
    "seq2seq": {"task": "seq2seq", "seq_len": 8, "data.source": "synthetic",
                "data.name": "reverse", "model.max_len": 8, "model.num_layers": 1,
                "seq2seq.beam_size": 2, "eval_steps": 1},
}


@pytest.fixture(scope="module")
def trained(make_config, tmp_path_factory):
  """trained(task) -> (workdir, the metrics training returned) of a 3-step run of that task, which
  evaluates at its end; each task trains once per module."""
  runs = {}

  def run(name):
    if name not in runs:
      config = make_config(steps=3, **TASKS[name])
      workdir = str(tmp_path_factory.mktemp(name))
      runs[name] = workdir, train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    return runs[name]

  return run


def stored(workdir):
  directory, step = find_checkpoint(workdir)
  return evaluate.eval_config(checkpoint_config(directory, step)), directory, step


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_gives_what_training_logged_at_that_step(trained, task):
  workdir, final = trained(task)
  config, directory, step = stored(workdir)
  scalars = evaluate.evaluate(config, directory, step, devices=jax.devices()[:1]).scalars
  logged = {k: v for k, v in final.items() if k.startswith("eval/")}
  assert step == 3 and scalars == logged  # the same program on the same batches: bitwise
  # Data-parallel over 8 devices, the sums are added in another order: equal to rounding.
  eight = evaluate.evaluate(config, directory, step, devices=jax.devices()).scalars
  assert eight == pytest.approx(logged, rel=1e-5, abs=1e-6)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "bigjax.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_the_command_applies_overrides_says_so_and_writes_metrics(trained, tmp_path):
  workdir, final = trained("seq2seq")  # the task with decoding settings
  out = tmp_path / "out"
  result = run_cli(f"--workdir={workdir}", "--config.seq2seq.beam_size=1", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "evaluating with seq2seq.beam_size=1 (trained with 2)" in result.stdout
  (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert row["step"] == 3 and set(row) == {"step"} | {k for k in final if k.startswith("eval/")}
  # Teacher-forced loss does not depend on the decoding; exact match and BLEU may.
  assert row["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--config.seq2seq.beam_sise=1"], "did you mean seq2seq.beam_size?"),
    (["--config.seq2seq.beam_size=0"], "seq2seq.beam_size=0 must be an integer >= 1"),
])
def test_bad_overrides_are_one_line_errors(trained, args, message):
  workdir, _ = trained("seq2seq")
  result = run_cli(f"--workdir={workdir}", *args)
  assert result.returncode == 2 and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_missing_run_is_a_one_line_error(tmp_path):
  result = run_cli(f"--workdir={tmp_path / 'nothing'}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'nothing'} does not exist; pass a workdir, its checkpoints directory "
      f"or a step directory"]
