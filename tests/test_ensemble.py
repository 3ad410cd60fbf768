"""Ensembles: K members in one vmapped step are K runs with seeds seed..seed+K-1; the ensemble
beats its average member; calibration is the textbook ECE; a killed ensemble run resumes exactly."""

import jax
import numpy as np
import pytest

from bigjax import build, metrics, tracking, train
from bigjax.config_checks import ConfigError
from configs import digits_mlp

MEMBERS = 2


def tiny(**overrides):
  c = digits_mlp.get_config()
  c.steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 60, 32, 10, 0, 30
  c.model.hidden = (16,)
  c.optim.lr, c.optim.warmup_steps = 3e-3, 5
  c.compilation_cache_dir = ""
  c.tracking.tensorboard = c.tracking.progress = False
  c.update_from_flattened_dict(overrides)
  c.lock()
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, killed_and_resumed, read_checkpoint):
  """The ensemble (killed at step 30 and resumed) and its members trained as separate runs."""
  config = tiny(**{"ensemble.members": MEMBERS})
  workdir = str(tmp_path_factory.mktemp("ensemble"))
  straight, resumed = killed_and_resumed(config, workdir)
  final = tracking.final_metrics(workdir, config.steps)
  separate = []
  for k in range(MEMBERS):
    alone = tiny(seed=config.seed + k)
    separate_dir = str(tmp_path_factory.mktemp(f"member{k}"))
    separate.append(train.train_and_evaluate(alone, separate_dir, devices=jax.devices()[:1]))
    separate[-1]["params"] = read_checkpoint(alone, separate_dir)[1].params
  return dict(config=config, straight=straight, resumed=resumed, final=final,
              separate=separate)


def test_vmapped_members_equal_separate_runs_with_their_seeds(runs):
  _, ensemble = runs["straight"]
  for k, alone in enumerate(runs["separate"]):
    member = jax.tree.map(lambda x: x[k], ensemble.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), member, alone["params"])
    assert runs["final"][f"eval/member_{k}/accuracy"] == pytest.approx(
        alone["eval/accuracy"], abs=1 / 360)  # at most one of the 360 test images apart


def test_ensemble_is_at_least_as_accurate_as_its_average_member(runs):
  final = runs["final"]
  members = [final[f"eval/member_{k}/accuracy"] for k in range(MEMBERS)]
  assert final["eval/mean_member_accuracy"] == pytest.approx(np.mean(members))
  assert final["eval/accuracy"] >= np.mean(members)


def test_ensemble_resumes_exactly(runs):
  (straight_step, straight), (resumed_step, resumed) = runs["straight"], runs["resumed"]
  assert straight_step == resumed_step == runs["config"].steps
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_expected_calibration_error_matches_its_definition():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(500, 4)) * 3, rng.integers(0, 4, 500)
  weights = (rng.random(500) > 0.1).astype(np.float32)  # some padding rows
  ece = metrics.calibration_summary(jax.tree.map(np.asarray, jax.jit(metrics.calibration_sums)(
      logits, labels, weights)))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  confidence, correct = probs.max(1), probs.argmax(1) == labels
  bins = np.minimum((confidence * metrics.CALIBRATION_BINS).astype(int),
                    metrics.CALIBRATION_BINS - 1)
  keep = weights > 0
  expected = sum(abs(correct[keep & (bins == b)].sum() - confidence[keep & (bins == b)].sum())
                 for b in range(metrics.CALIBRATION_BINS)) / keep.sum()
  assert ece == pytest.approx(expected, rel=1e-5)


def test_zero_members_fail_with_one_line():
  with pytest.raises(ConfigError, match=r"ensemble\.members=0 must be at least 1"):
    build.make_task(tiny(**{"ensemble.members": 0}))
