"""bigjax.metrics agrees with scikit-learn on the same predictions, padding rows masked out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from bigjax import metrics

C = 5


def _batches(rng, num_batches=3, batch=32, padding=11):
  """Random logits and labels in batches; the last `padding` rows of the last batch are padding."""
  logits = rng.normal(size=(num_batches, batch, C)).astype(np.float32) * 2
  labels = rng.integers(0, C, size=(num_batches, batch))
  labels[:, :3] = 0  # class 0 is frequent, so classes differ in size
  weights = np.ones((num_batches, batch), np.float32)
  weights[-1, batch - padding:] = 0
  logits[-1, batch - padding:] = 50.0  # garbage that would change every metric if it counted
  return logits, labels, weights


def _summed(fn, *batches):
  sums = [jax.jit(fn)(*b) for b in zip(*batches)]
  return jax.tree.map(lambda *xs: np.sum(xs, axis=0), *sums)


def test_classification_matches_sklearn():
  logits, labels, weights = _batches(np.random.default_rng(0))
  summary = metrics.classification_summary(
      _summed(metrics.classification_sums, logits, labels, weights))
  keep = weights.reshape(-1) > 0
  y = labels.reshape(-1)[keep]
  scores = logits.reshape(-1, C)[keep]
  probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
  pred = scores.argmax(-1)
  kw = dict(labels=np.arange(C), average="macro", zero_division=0)
  assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
  assert summary["precision"] == pytest.approx(skm.precision_score(y, pred, **kw), abs=1e-6)
  assert summary["recall"] == pytest.approx(skm.recall_score(y, pred, **kw), abs=1e-6)
  assert summary["f1"] == pytest.approx(skm.f1_score(y, pred, **kw), abs=1e-6)
  assert summary["loss"] == pytest.approx(skm.log_loss(y, probs, labels=np.arange(C)), abs=1e-5)
  # Histogram bins 1/128 wide in log-odds merge only near-ties, so the AUC is close, not exact.
  sk_auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
  assert summary["roc_auc"] == pytest.approx(sk_auc, abs=2e-3)


def test_confusion_and_per_class_scores_match_sklearn():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, C, 200)
  preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, C, 200))
  preds[preds == 4] = 3  # class 4 is never predicted: its precision is 0, not NaN
  weights = (rng.random(200) < 0.8).astype(np.float32)
  confusion = np.asarray(metrics.confusion_matrix(labels, preds, weights, C))
  keep = weights > 0
  np.testing.assert_array_equal(
      confusion, skm.confusion_matrix(labels[keep], preds[keep], labels=np.arange(C)))
  precision, recall, f1 = metrics.precision_recall_f1(confusion)
  sk = skm.precision_recall_fscore_support(labels[keep], preds[keep], labels=np.arange(C),
                                           zero_division=0)
  np.testing.assert_allclose(precision, sk[0], atol=1e-9)
  np.testing.assert_allclose(recall, sk[1], atol=1e-9)
  np.testing.assert_allclose(f1, sk[2], atol=1e-9)
  # The summary reports the same per-class values under the class names, and their means.
  summary = metrics.classification_summary(
      {"confusion": confusion, "loss": 0.0, "count": 1.0, "auc_positives": np.ones((C, 2)),
       "auc_negatives": np.ones((C, 2))}, class_names=list("abcde"))
  for name, values in zip(("precision", "recall", "f1"), sk[:3]):
    assert [summary[f"{name}/{c}"] for c in "abcde"] == pytest.approx(values, abs=1e-9)
    assert summary[name] == pytest.approx(np.mean(values), abs=1e-9)


def test_binary_auc_and_roc_curve_exact_when_scores_fall_on_bin_centres():
  rng = np.random.default_rng(2)
  bins, limit = 64, 4.0
  labels = rng.integers(0, 2, 300)
  # Few distinct scores, many exact ties: the histogram loses nothing and sklearn must agree.
  score_bin = np.clip(rng.integers(0, 40, 300) + 12 * labels, 0, bins - 1)
  scores = -limit + (score_bin + 0.5) * (2 * limit / bins)
  weights = np.ones(300, np.float32)
  weights[-20:] = 0
  scores_Bx2 = np.stack([-scores, scores], -1).astype(np.float32)
  positives, negatives = metrics.score_histograms(jnp.asarray(scores_Bx2), labels, weights,
                                                  bins=bins, limit=limit)
  keep = weights > 0
  sk_auc = skm.roc_auc_score(labels[keep], scores[keep])
  assert metrics.roc_auc(positives[1], negatives[1]) == pytest.approx(sk_auc, abs=1e-9)
  assert metrics.roc_auc(positives[0], negatives[0]) == pytest.approx(sk_auc, abs=1e-9)
  fpr, tpr = metrics.roc_curve(positives[1], negatives[1])
  sk_fpr, sk_tpr, _ = skm.roc_curve(labels[keep], scores[keep], drop_intermediate=False)
  # Our curve has a point per bin (empty bins repeat a point); sklearn one per distinct score.
  ours = set(zip(np.round(fpr, 9), np.round(tpr, 9)))
  assert ours == set(zip(np.round(sk_fpr, 9), np.round(sk_tpr, 9)))


def test_log_odds_is_stable_for_confident_logits():
  logits = jnp.array([[30.0, 0.0, 0.0], [0.0, -30.0, 5.0]])
  expected = np.array([[30 - np.log(2), -np.logaddexp(30, 0), -np.logaddexp(30, 0)],
                       [-np.logaddexp(-30, 5), -30 - np.logaddexp(0, 5), 5 - np.logaddexp(0, -30)]])
  np.testing.assert_allclose(metrics.log_odds(logits), expected, rtol=1e-5)


def test_regression_matches_sklearn():
  rng = np.random.default_rng(3)
  targets = rng.normal(150, 70, size=(3, 16)).astype(np.float32)
  preds = (targets + rng.normal(0, 40, size=targets.shape)).astype(np.float32)
  weights = np.ones_like(targets)
  weights[-1, -5:] = 0
  preds[-1, -5:] = 1e6
  summary = metrics.regression_summary(_summed(metrics.regression_sums, preds, targets, weights))
  keep = weights.reshape(-1) > 0
  y, p = targets.reshape(-1)[keep], preds.reshape(-1)[keep]
  assert summary["mse"] == pytest.approx(skm.mean_squared_error(y, p), rel=1e-5)
  assert summary["mae"] == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-5)
  assert summary["r2"] == pytest.approx(skm.r2_score(y, p), abs=1e-4)
