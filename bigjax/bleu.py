"""Corpus BLEU (Papineni et al., 2002), from statistics that add up over sentences and batches.

For each hypothesis and its one reference, `statistics` counts, for n = 1..4, the hypothesis
n-grams and how many of them the reference holds (each n-gram credited at most as often as it
occurs in the reference: the "modified" precision, so "the the the" earns no more than the
reference's "the"s), plus both lengths. Corpus BLEU adds these counts over every sentence first,
then takes

    BLEU = 100 x BP x exp(mean over n of log(matches_n / total_n)),
    BP = min(1, exp(1 - ref_len / hyp_len))  (the brevity penalty: only short output pays),

so it is not the mean of sentence BLEUs. Because the statistics are sums, an eval loop can add
them batch by batch like any other metric in bigjax.metrics and finish the score once, on host.

Counting runs on the host, from decoded sequences, not on the device: for text, BLEU is defined
on the words of the detokenized output (a SentencePiece piece is not a word, and scores on pieces
do not compare with anyone's), and detokenizing and matching variable-length n-grams are string
and dictionary work that an accelerator has no way to do.
"""

import collections
import math
import re
from typing import Hashable, Sequence

import numpy as np

MAX_ORDER = 4  # n-grams up to 4, as in the paper and every reported figure


def statistics(hypothesis: Sequence[Hashable], reference: Sequence[Hashable],
               max_order: int = MAX_ORDER) -> np.ndarray:
  """[matches_1..N, totals_1..N, hypothesis length, reference length] of one sentence pair."""
  matches, totals = np.zeros(max_order, np.int64), np.zeros(max_order, np.int64)
  for n in range(1, max_order + 1):
    hyp_counts, ref_counts = _ngrams(hypothesis, n), _ngrams(reference, n)
    matches[n - 1] = sum((hyp_counts & ref_counts).values())  # & keeps the smaller count: clipping
    totals[n - 1] = sum(hyp_counts.values())
  return np.concatenate([matches, totals, [len(hypothesis), len(reference)]])


def corpus_statistics(hypotheses: Sequence[Sequence[Hashable]],
                      references: Sequence[Sequence[Hashable]],
                      max_order: int = MAX_ORDER) -> np.ndarray:
  """The sum of `statistics` over sentence pairs."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  stats = np.zeros(2 * max_order + 2, np.int64)
  for hypothesis, reference in zip(hypotheses, references):
    stats += statistics(hypothesis, reference, max_order)
  return stats


def score(stats: np.ndarray, smooth: bool = False) -> float:
  """BLEU in [0, 100] from summed `statistics` (their length gives the maximum order).

  Without smoothing, an n-gram order with no match anywhere makes the score 0. With `smooth`, the
  k-th such order counts as 1 / (2^k x total_n) matches instead (Chen and Cherry's method 3, as
  NIST's mteval-v13a and sacrebleu's default do), which keeps a small, still ordered signal when
  the corpus is tiny or the model is young. A corpus without a single matching word scores 0
  either way.
  """
  stats = np.asarray(stats, np.float64)
  max_order = (len(stats) - 2) // 2
  matches, totals = stats[:max_order], stats[max_order:2 * max_order]
  hyp_len, ref_len = stats[-2], stats[-1]
  if hyp_len == 0 or matches.sum() == 0 or (totals == 0).any():
    return 0.0
  log_precision, halvings = 0.0, 0
  for n in range(max_order):
    if matches[n] > 0:
      log_precision += math.log(matches[n] / totals[n])
    elif smooth:
      halvings += 1
      log_precision += math.log(1 / (2**halvings * totals[n]))
    else:
      return 0.0
  brevity_penalty = min(1.0, math.exp(1 - ref_len / hyp_len))
  return 100 * brevity_penalty * math.exp(log_precision / max_order)


def corpus_bleu(hypotheses: Sequence[Sequence[Hashable]],
                references: Sequence[Sequence[Hashable]], max_order: int = MAX_ORDER,
                smooth: bool = False) -> float:
  """BLEU of token sequences against one reference each, in [0, 100]."""
  return score(corpus_statistics(hypotheses, references, max_order), smooth)


def words(text: str) -> list[str]:
  """The tokens BLEU counts in text: words (with inner apostrophes: "It's"), numbers (with inner
  points and commas: "3.5", "1,000") and every other punctuation character on its own.

  BLEU on text depends on how it is cut; this cut gives sacrebleu's default "13a" tokens on
  ordinary sentences, but 13a has rules this lacks (HTML entities, hyphens after digits), so
  report sacrebleu's score on the decoded outputs when a figure must compare with published ones.
  """
  return re.findall(r"\d+(?:[.,]\d+)+|\w+(?:'\w+)*|[^\w\s]", text)


def _ngrams(tokens: Sequence[Hashable], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
