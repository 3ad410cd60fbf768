"""Encoder-decoder: the decoder is causal, greedy == beam search of width 1, beam search finds
the best sequence of a hand-made model, and the family runs through the loop on 1 and 8 devices."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.data import text_tasks
from bigjax.models import seq2seq
from bigjax.models.layers import TransformerConfig
from bigjax.train import train_and_evaluate

SPECIAL = text_tasks.SpecialTokens(256)
CFG = TransformerConfig(vocab_size=SPECIAL.vocab_size, num_layers=2, num_heads=2, num_kv_heads=2,
                        d_model=16, d_ff=32, max_len=8)


def test_decoder_is_causal_and_reads_the_source():
  model = seq2seq.EncoderDecoder(CFG, SPECIAL.pad)
  source_BxS = jnp.array([[5, 6, 7, SPECIAL.pad]])
  target_BxL = jnp.array([[SPECIAL.bos, 1, 2, 3, 4]])
  params = model.init(jax.random.key(0), source_BxS, target_BxL)
  logits = model.apply(params, source_BxS, target_BxL)
  later = model.apply(params, source_BxS, target_BxL.at[0, 3].set(9))
  np.testing.assert_allclose(logits[0, :3], later[0, :3], atol=1e-5)  # positions before 3
  assert not np.allclose(logits[0, 3], later[0, 3])
  other_source = model.apply(params, source_BxS.at[0, 0].set(8), target_BxL)
  assert not np.allclose(logits[0, 0], other_source[0, 0])  # cross-attention sees the source


def test_greedy_equals_beam_of_one():
  model = seq2seq.EncoderDecoder(CFG, SPECIAL.pad)
  source_BxS = jax.random.randint(jax.random.key(1), (3, 6), 48, 58)
  params = model.init(jax.random.key(0), source_BxS, source_BxS)["params"]
  greedy = seq2seq.decode(model, params, source_BxS, 8, SPECIAL.bos, 0, beam_size=1)
  memory, valid = model.apply({"params": params}, source_BxS, method="encode")
  logits_fn = lambda x, t: model.apply({"params": params}, x, memory, valid, method="decode")[:, t]
  beam, _ = seq2seq.beam_search(logits_fn, 3, 1, 8, SPECIAL.bos, 0, SPECIAL.pad)
  np.testing.assert_array_equal(greedy, beam)


# A hand-made model over 6 ids: the next token's logits depend on the previous token alone.
V, PAD, BOS, EOS, T = 6, 4, 5, 0, 4
TABLE = np.random.default_rng(0).normal(size=(V, V)) * 2


def bigram_logits(inputs_NxT, t):
  return jnp.asarray(TABLE)[inputs_NxT[:, t]]


def sequence_score(tokens):
  """Log-prob of `tokens` (ending at EOS or after T tokens) under the bigram model."""
  logp = jax.nn.log_softmax(jnp.asarray(TABLE).at[:, (PAD, BOS)].set(-jnp.inf))
  score, prev = 0.0, BOS
  for token in tokens:
    score += float(logp[prev, token])
    if token == EOS:
      break
    prev = token
  return score


def test_beam_search_finds_the_best_sequence():
  # Every output: T tokens, or cut after the first EOS.
  hypotheses = {w[:w.index(EOS) + 1] if EOS in w else w
                for w in itertools.product([0, 1, 2, 3], repeat=T)}
  best = max(hypotheses, key=sequence_score)
  # Width 4^(T-1) keeps every prefix, so the beam is exhaustive and must find the best.
  outputs, score = seq2seq.beam_search(bigram_logits, 1, 4 ** (T - 1), T, BOS, EOS, PAD)
  found = tuple(int(t) for t in outputs[0] if t != PAD)
  assert found == best
  np.testing.assert_allclose(float(score[0]), sequence_score(best), rtol=1e-5)
  # The score a narrow beam reports is the true score of the sequence it returns.
  narrow, narrow_score = seq2seq.beam_search(bigram_logits, 1, 2, T, BOS, EOS, PAD)
  tokens = [int(t) for t in narrow[0] if t != PAD]
  np.testing.assert_allclose(float(narrow_score[0]), sequence_score(tokens), rtol=1e-5)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_seq2seq_runs_through_the_loop(make_config, workdir, num_devices):
  config = make_config(task="seq2seq", seq_len=8, **{
      "data.source": "synthetic", "data.name": "reverse", "model.max_len": 8,
      "seq2seq.beam_size": 2 if num_devices == 8 else 1, "eval_steps": 1,
      "model.num_layers": 1})
  final = train_and_evaluate(config, workdir, devices=jax.devices()[:num_devices])
  assert np.isfinite(final["train/loss"]) and 0 <= final["eval/exact_match"] <= 1
