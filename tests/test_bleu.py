"""Corpus BLEU: the ends of the scale, examples worked by hand, and agreement with sacrebleu."""

import math

import numpy as np
import pytest

from bigjax import bleu


def test_identical_corpus_scores_100():
  corpus = [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]]
  assert bleu.corpus_bleu(corpus, corpus) == pytest.approx(100.0)


@pytest.mark.parametrize("smooth", [False, True])
def test_corpus_without_a_shared_token_scores_0(smooth):
  assert bleu.corpus_bleu([[1, 2, 3, 4, 5]], [[6, 7, 8, 9, 10]], smooth=smooth) == 0.0
  assert bleu.corpus_bleu([[]], [[6, 7, 8, 9]], smooth=smooth) == 0.0  # empty output


def test_worked_example():
  # hypothesis a b c d e f (6 tokens), reference a b c d x f g (7 tokens):
  #   1-grams: a b c d f of 6 match        -> 5/6
  #   2-grams: ab bc cd of ab bc cd de ef  -> 3/5
  #   3-grams: abc bcd of abc bcd cde def  -> 2/4
  #   4-grams: abcd of abcd bcde cdef      -> 1/3
  # geometric mean (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4) = 0.537285
  # brevity penalty exp(1 - 7/6) = 0.846482, so BLEU = 100 * 0.537285 * 0.846482 = 45.480
  hypothesis, reference = list("abcdef"), list("abcdxfg")
  np.testing.assert_array_equal(bleu.statistics(hypothesis, reference),
                                [5, 3, 2, 1, 6, 5, 4, 3, 6, 7])
  expected = 100 * (1 / 12) ** 0.25 * math.exp(1 - 7 / 6)
  assert expected == pytest.approx(45.480, abs=1e-3)
  assert bleu.corpus_bleu([hypothesis], [reference]) == pytest.approx(expected)


def test_repeated_words_are_credited_only_as_often_as_the_reference_has_them():
  # Papineni et al.'s example: seven "the" against a reference with two earn 2/7, not 7/7.
  stats = bleu.statistics("the the the the the the the".split(), "the cat is on the mat".split())
  assert (stats[0], stats[4]) == (2, 7)


def test_smoothing_worked_example():
  # hypothesis a b c d, reference a b c e: 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1.
  # Unsmoothed the empty 4-gram order gives 0. Smoothed it counts 1 / (2 * 1) = 1/2, so
  # BLEU = 100 * (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = 100 * (1/8) ** (1/4) = 59.460 (equal lengths).
  hypothesis, reference = list("abcd"), list("abce")
  assert bleu.corpus_bleu([hypothesis], [reference]) == 0.0
  assert bleu.corpus_bleu([hypothesis], [reference], smooth=True) == pytest.approx(
      100 * (1 / 8) ** 0.25)


def test_corpus_bleu_pools_counts_before_taking_the_ratio():
  # Both outputs are right, but the 2-token one has no 4-gram, so alone it scores 0: the mean of
  # sentence BLEUs is 50. Pooled, every n-gram of the corpus matches: 100.
  hypotheses = references = [list("abcd"), list("ab")]
  assert [bleu.corpus_bleu([h], [h]) for h in hypotheses] == [pytest.approx(100.0), 0.0]
  assert bleu.corpus_bleu(hypotheses, references) == pytest.approx(100.0)
  stats = sum(bleu.statistics(h, r) for h, r in zip(hypotheses, references))
  np.testing.assert_array_equal(stats, [6, 4, 2, 1, 6, 4, 2, 1, 6, 6])


SENTENCES = ["Hello, world! It's 3.5 km, or 1,000 steps.",
             'He said: "no way!" and left (quickly) at 10:30; prices rose 4% to $5.']


def test_words_splits_punctuation_from_words():
  assert bleu.words(SENTENCES[0]) == [
      "Hello", ",", "world", "!", "It's", "3.5", "km", ",", "or", "1,000", "steps", "."]


def test_words_match_sacrebleu_13a_on_ordinary_sentences():
  tokenizer_13a = pytest.importorskip("sacrebleu.tokenizers.tokenizer_13a")
  for sentence in SENTENCES:
    assert bleu.words(sentence) == tokenizer_13a.Tokenizer13a()(sentence).split()


@pytest.mark.parametrize("smooth", [False, True])
def test_agrees_with_sacrebleu_on_random_token_sequences(smooth):
  sacrebleu = pytest.importorskip("sacrebleu")
  rng = np.random.default_rng(0)
  for trial in range(20):
    # Four distinct tokens and short sentences: many partial matches, some orders without any.
    pairs = [(rng.integers(0, 4, rng.integers(1, 16)), rng.integers(0, 4, rng.integers(1, 16)))
             for _ in range(rng.integers(1, 8))]
    hypotheses = [[str(t) for t in h] for h, _ in pairs]
    references = [[str(t) for t in r] for _, r in pairs]
    expected = sacrebleu.corpus_bleu(
        [" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]],
        tokenize="none", smooth_method="exp" if smooth else "none", force=True).score
    assert bleu.corpus_bleu(hypotheses, references, smooth=smooth) == pytest.approx(
        expected, abs=1e-9), trial
