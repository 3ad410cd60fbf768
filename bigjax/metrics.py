"""Evaluation metrics as sufficient statistics: summed on device over batches, finished on host.

An eval step returns sums over one batch (counts, histograms, squared errors) with each example
weighted by `weights_B` (0 for the padding rows that fill the last batch); the loop adds the sums
of all batches, and a `*_summary` function turns the totals into numbers on the host. Summing
statistics instead of averaging per-batch metrics makes every example count exactly once, whatever
the batch size, the padding or the number of devices, and the sums are tiny to replicate.

Shape letters: B batch, C classes, N score-histogram bins.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

# ROC-AUC from histograms of each class's log-odds: 4096 bins over [-16, 16] are 1/128 wide.
# Scores in the same bin count as ties (half a correct pair, as scikit-learn counts exact ties),
# so the AUC is exact up to pairs closer than a bin; log-odds beyond +-16 (probabilities within
# 1e-7 of 0 or 1) share the edge bins.
AUC_BINS = 4096
AUC_LIMIT = 16.0
CALIBRATION_BINS = 15  # the usual number for expected calibration error


# On device, per batch.


def confusion_matrix(labels_B, preds_B, weights_B, num_classes: int) -> jax.Array:
  """CxC weighted counts: row = true class, column = predicted class."""
  counts_CxC = jnp.zeros((num_classes, num_classes), jnp.float32)
  return counts_CxC.at[labels_B, preds_B].add(weights_B.astype(jnp.float32))


def log_odds(logits_BxC) -> jax.Array:
  """log(p_c / (1 - p_c)) of the softmax, computed as l_c - logsumexp_{j != c} l_j.

  Subtracting the other classes' logsumexp avoids computing 1 - p_c, which rounds to 0 for a
  confident class. A monotone function of p_c, so it ranks (and gives AUCs) exactly as p_c does.
  """
  C = logits_BxC.shape[-1]
  others_BxCxC = jnp.where(jnp.eye(C, dtype=bool), -jnp.inf, logits_BxC[:, None, :])
  return logits_BxC - jax.nn.logsumexp(others_BxCxC, axis=-1)


def score_histograms(scores_BxC, labels_B, weights_B, bins: int = AUC_BINS,
                     limit: float = AUC_LIMIT) -> tuple[jax.Array, jax.Array]:
  """(positives_CxN, negatives_CxN): per class c, weighted histograms of scores_BxC[:, c] over
  the examples of class c and over all the others (one-vs-rest), with N bins over [-limit, limit]."""
  B, C = scores_BxC.shape
  bin_BxC = jnp.floor((scores_BxC + limit) / (2 * limit) * bins).astype(jnp.int32)
  bin_BxC = jnp.clip(bin_BxC, 0, bins - 1)
  positive_BxC = jax.nn.one_hot(labels_B, C, dtype=jnp.float32)
  weights_Bx1 = weights_B.astype(jnp.float32)[:, None]
  class_BxC = jnp.broadcast_to(jnp.arange(C), (B, C))
  zeros_CxN = jnp.zeros((C, bins), jnp.float32)
  positives_CxN = zeros_CxN.at[class_BxC, bin_BxC].add(positive_BxC * weights_Bx1)
  negatives_CxN = zeros_CxN.at[class_BxC, bin_BxC].add((1 - positive_BxC) * weights_Bx1)
  return positives_CxN, negatives_CxN


def classification_sums(logits_BxC, labels_B, weights_B) -> dict[str, jax.Array]:
  """Everything `classification_summary` needs, for one batch."""
  logits_BxC = logits_BxC.astype(jnp.float32)
  weights_B = weights_B.astype(jnp.float32)
  loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
  positives_CxN, negatives_CxN = score_histograms(log_odds(logits_BxC), labels_B, weights_B)
  return {"loss": (loss_B * weights_B).sum(), "count": weights_B.sum(),
          "confusion": confusion_matrix(labels_B, logits_BxC.argmax(-1), weights_B,
                                        logits_BxC.shape[-1]),
          "auc_positives": positives_CxN, "auc_negatives": negatives_CxN}


def calibration_sums(logits_BxC, labels_B, weights_B, bins: int = CALIBRATION_BINS):
  """Per confidence bin (equal widths over [0, 1]): weighted count, summed confidence (the top
  probability) and summed correctness, for the expected calibration error."""
  probs_BxC = jax.nn.softmax(logits_BxC.astype(jnp.float32))
  confidence_B = probs_BxC.max(-1)
  correct_B = (probs_BxC.argmax(-1) == labels_B).astype(jnp.float32)
  bin_B = jnp.clip(jnp.floor(confidence_B * bins).astype(jnp.int32), 0, bins - 1)
  weights_B = weights_B.astype(jnp.float32)
  per_bin = lambda x_B: jnp.zeros(bins, jnp.float32).at[bin_B].add(weights_B * x_B)
  return {"count": per_bin(jnp.ones_like(confidence_B)), "confidence": per_bin(confidence_B),
          "correct": per_bin(correct_B)}


def regression_sums(preds_B, targets_B, weights_B) -> dict[str, jax.Array]:
  """Weighted sums of errors and of targets (for R^2), for one batch."""
  preds_B, targets_B = preds_B.astype(jnp.float32), targets_B.astype(jnp.float32)
  weights_B = weights_B.astype(jnp.float32)
  error_B = preds_B - targets_B
  return {"count": weights_B.sum(), "squared_error": (weights_B * error_B**2).sum(),
          "absolute_error": (weights_B * jnp.abs(error_B)).sum(),
          "target": (weights_B * targets_B).sum(), "squared_target": (weights_B * targets_B**2).sum()}


# On host, from the sums of all batches.


def calibration_summary(sums) -> float:
  """Expected calibration error: sum over bins of |accuracy - confidence|, weighted by the
  bin's share of examples (Guo et al., 2017)."""
  count = np.asarray(sums["count"], np.float64)
  gap = np.abs(np.asarray(sums["correct"], np.float64) - np.asarray(sums["confidence"], np.float64))
  return float(gap.sum() / count.sum())


def _divide(numerator, denominator):
  """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def precision_recall_f1(confusion_CxC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-class precision, recall and F1 (each of shape C); 0 for a class never predicted/seen."""
  confusion_CxC = np.asarray(confusion_CxC, np.float64)
  true_positives_C = np.diag(confusion_CxC)
  precision_C = _divide(true_positives_C, confusion_CxC.sum(0))
  recall_C = _divide(true_positives_C, confusion_CxC.sum(1))
  return precision_C, recall_C, _divide(2 * precision_C * recall_C, precision_C + recall_C)


def roc_auc(positives_N, negatives_N) -> float:
  """Probability that a random positive outscores a random negative, ties counting half.

  This is the area under the ROC curve (Mann-Whitney U); NaN without positives or negatives.
  """
  positives_N = np.asarray(positives_N, np.float64)
  negatives_N = np.asarray(negatives_N, np.float64)
  negatives_below_N = np.cumsum(negatives_N) - negatives_N
  pairs = positives_N.sum() * negatives_N.sum()
  if pairs == 0:
    return float("nan")
  return float((positives_N * (negatives_below_N + negatives_N / 2)).sum() / pairs)


def roc_curve(positives_N, negatives_N) -> tuple[np.ndarray, np.ndarray]:
  """(false positive rates, true positive rates), from the highest threshold to the lowest."""
  tp = np.concatenate([[0.0], np.cumsum(np.asarray(positives_N, np.float64)[::-1])])
  fp = np.concatenate([[0.0], np.cumsum(np.asarray(negatives_N, np.float64)[::-1])])
  return _divide(fp, fp[-1]), _divide(tp, tp[-1])


CLASSIFICATION_METRICS = ("loss", "accuracy", "precision", "recall", "f1", "roc_auc")


def classification_summary(sums, class_names=None) -> dict[str, float]:
  """Loss, accuracy, macro precision/recall/F1 and one-vs-rest macro ROC-AUC, then each class's
  precision, recall and F1 as "precision/NAME" ... (NAME from `class_names`, else its index).

  Macro averages weigh every class equally; the AUC averages over classes that have both
  positives and negatives (with two classes it is the binary AUC: both classes give the same).
  """
  confusion_CxC = np.asarray(sums["confusion"], np.float64)
  precision_C, recall_C, f1_C = precision_recall_f1(confusion_CxC)
  aucs = [roc_auc(p, n) for p, n in zip(sums["auc_positives"], sums["auc_negatives"])]
  summary = {"loss": float(sums["loss"] / sums["count"]),
             "accuracy": float(np.trace(confusion_CxC) / confusion_CxC.sum()),
             "precision": float(precision_C.mean()), "recall": float(recall_C.mean()),
             "f1": float(f1_C.mean()), "roc_auc": float(np.nanmean(aucs))}
  names = class_names or [str(c) for c in range(len(confusion_CxC))]
  for name, values_C in (("precision", precision_C), ("recall", recall_C), ("f1", f1_C)):
    summary |= {f"{name}/{c}": float(v) for c, v in zip(names, values_C)}
  return summary


def regression_summary(sums) -> dict[str, float]:
  """MSE, RMSE, MAE and R^2 (1 - squared error / the targets' squared deviation from their mean)."""
  n = float(sums["count"])
  mse = float(sums["squared_error"]) / n
  target_variance = float(sums["squared_target"]) / n - (float(sums["target"]) / n) ** 2
  return {"mse": mse, "rmse": mse**0.5, "mae": float(sums["absolute_error"]) / n,
          "r2": 1 - mse / target_variance}
