"""The loop end to end on one device: the loss falls, a killed run resumes exactly, non-finite
losses stop (or are skipped), and metrics.jsonl records what a reader plots."""

import math
import os
import shutil
import threading

import jax
import ml_collections
import numpy as np
import pytest

from bigjax import optim, train
from bigjax.config_checks import ConfigError


@pytest.fixture(scope="module")
def resumed_run(make_config, tmp_path_factory, read_checkpoint, metrics_of):
  """A 40-step run, then the same run killed after its step-20 checkpoint and started again.

  Dropout is on, so the resumed run must also draw the same random numbers.
  """
  config = make_config(steps=40, checkpoint_every=20, eval_every=20, **{"model.dropout": 0.1})
  workdir = str(tmp_path_factory.mktemp("resume"))
  final = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  straight = metrics_of(workdir)
  straight_step, straight_state = read_checkpoint(config, workdir)

  shutil.rmtree(f"{workdir}/checkpoints/40")  # as if killed between the saves of steps 20 and 40
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  rows = metrics_of(workdir)
  resumed_step, resumed_state = read_checkpoint(config, workdir)
  # The rerun replaces the lines past step 20 with its own (bigjax.tracking.drop_rows_after).
  return dict(final=final, straight=straight, resumed=[r for r in rows if r["step"] > 20],
              straight_state=(straight_step, straight_state),
              resumed_state=(resumed_step, resumed_state))


def train_losses(rows):
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_tiny_model_loss_falls(resumed_run):
  losses = train_losses(resumed_run["straight"])
  assert sorted(losses) == list(range(1, 41))
  assert losses[1] > 5.0  # about ln(256): bytes start out uniform
  assert np.mean([losses[s] for s in range(36, 41)]) < losses[1] - 1.5
  evals = [r["eval/loss"] for r in resumed_run["straight"] if "eval/loss" in r]
  assert len(evals) == 2 and evals[1] < evals[0] < losses[1]


def test_resume_continues_as_if_never_stopped(resumed_run):
  straight_step, straight = resumed_run["straight_state"]
  resumed_step, resumed = resumed_run["resumed_state"]
  assert straight_step == resumed_step == 40
  assert int(resumed.step) == 40
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)  # bitwise, optimizer included
  resumed_losses = train_losses(resumed_run["resumed"])
  assert sorted(resumed_losses) == list(range(21, 41))
  assert resumed_losses == {s: l for s, l in train_losses(resumed_run["straight"]).items()
                            if s > 20}


def test_metrics_jsonl_records_losses_and_throughput(resumed_run, make_config):
  rows = resumed_run["straight"]
  assert all(isinstance(r["step"], int) for r in rows)
  train_rows = [r for r in rows if "train/loss" in r]
  config = make_config(steps=40)
  schedule = optim.schedule(config.optim, config.steps)
  tokens_per_step = config.batch_size * config.seq_len
  for r in train_rows:
    # Throughput is what was done over how long it took; MFU is the same time against the FLOPs.
    assert r["perf/tokens_per_sec"] == pytest.approx(tokens_per_step / r["perf/step_seconds"])
    assert r["perf/mfu"] / r["perf/tokens_per_sec"] == pytest.approx(
        train_rows[0]["perf/mfu"] / train_rows[0]["perf/tokens_per_sec"])
    # Step s was taken at the learning rate the schedule gives its 0-based index, s - 1.
    assert r["train/lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
    assert math.isfinite(r["train/grad_norm"])
  eval_rows = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in eval_rows] == [20, 40]
  assert math.isclose(eval_rows[-1]["eval/perplexity"], math.exp(eval_rows[-1]["eval/loss"]),
                      rel_tol=1e-5)
  final = resumed_run["final"]
  assert final["train/loss"] == train_rows[-1]["train/loss"]
  assert final["eval/loss"] == eval_rows[-1]["eval/loss"]


# lr=1e30 from step 0: the first update makes the weights huge (about 1e30, still finite), so the
# loss of step 2 overflows.
EXPLODE = {"optim.lr": 1e30, "optim.warmup_steps": 0, "optim.schedule": "constant"}


def test_non_finite_state_stops_names_the_step_and_is_never_saved(make_config, workdir):
  config = make_config(steps=4, checkpoint_every=1, **EXPLODE)
  with pytest.raises(train.NonFiniteLoss, match=r"at step 2\b.*last good checkpoint: step 1\b"):
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()] == ["1"]


@pytest.mark.parametrize("freeze", ["", "^embed/"])
def test_skip_mode_drops_non_finite_updates_and_counts_them(make_config, workdir, metrics_of,
                                                            freeze):
  """Also with frozen parameters, whose optimizer wrapper once hid the skip counter."""
  config = make_config(steps=4, on_nonfinite="skip", freeze=freeze, **EXPLODE)
  final = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  skipped = {r["step"]: r["train/skipped_steps"] for r in metrics_of(workdir)
             if "train/skipped_steps" in r}
  assert skipped == {1: 0, 2: 1, 3: 2, 4: 3}
  assert final["train/skipped_steps"] == 3


def test_rerun_of_a_finished_run_reports_its_final_metrics(make_config, workdir, capsys):
  config = make_config(steps=3, eval_every=3)
  final = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  again = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert again["eval/loss"] == final["eval/loss"] and again["train/loss"] == final["train/loss"]
  assert f"{workdir} finished at step 3" in capsys.readouterr().out


def test_early_stopping_resumes_without_evaluations_during_training(make_config, workdir):
  """eval_every=0 evaluates only at the end; a longer rerun must still count from WORKDIR/best."""
  config = make_config(steps=2, **{"early_stop.metric": "eval/loss", "early_stop.mode": "min"})
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  longer = make_config(steps=4, **{"early_stop.metric": "eval/loss", "early_stop.mode": "min"})
  final = train.train_and_evaluate(longer, workdir, devices=jax.devices()[:1])
  assert final["best/step"] in (2, 4)


def test_runs_from_a_thread_with_an_unlocked_config(make_config, workdir):
  """As from a notebook: no signal handlers off the main thread, and typos still fail."""
  config = ml_collections.ConfigDict(make_config(steps=2).to_dict())  # unlocked
  results = {}
  thread = threading.Thread(target=lambda: results.update(
      train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])))
  thread.start()
  thread.join()
  assert "train/loss" in results
  config.optim.lrr = 1e-3
  with pytest.raises(ConfigError, match=r"optim\.lrr is unknown; did you mean optim\.lr\?"):
    train.train_and_evaluate(config, workdir + "2", devices=jax.devices()[:1])
