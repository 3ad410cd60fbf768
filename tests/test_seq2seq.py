"""Encoder-decoder: the decoder is causal, greedy == beam search of width 1, beam search finds
the best sequence of a hand-made model, eval scores exact match and BLEU from the decoded outputs,
the family runs through the loop on 1 and 8 devices, offline and on (mock) WMT, and the WMT config
holds only known keys."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.config_checks import ConfigError, check_config
from bigjax.data import seq2seq as pairs_data
from bigjax.data.tokenizers import SpecialTokens
from bigjax.models import seq2seq
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.seq2seq import Seq2SeqTask
from bigjax.train import train_and_evaluate
from configs import base, wmt14_de_en

SPECIAL = SpecialTokens(256)
CFG = TransformerConfig(vocab_size=SPECIAL.vocab_size, num_layers=2, num_heads=2, num_kv_heads=2,
                        d_model=16, d_ff=32, max_len=8)
MODEL = seq2seq.EncoderDecoder(CFG, SPECIAL.pad)


@pytest.fixture(scope="module")
def params():
  """The model's parameters, initialised once, jitted (eager init traces op by op: much slower)."""
  dummy = jnp.zeros((1, 8), jnp.int32)
  return jax.jit(MODEL.init)(jax.random.key(0), dummy, dummy)["params"]


def test_decoder_is_causal_and_reads_the_source(params):
  apply = jax.jit(lambda source, target: MODEL.apply({"params": params}, source, target))
  source_BxS = jnp.array([[5, 6, 7, SPECIAL.pad]])
  target_BxL = jnp.array([[SPECIAL.bos, 1, 2, 3, 4]])
  logits = apply(source_BxS, target_BxL)
  later = apply(source_BxS, target_BxL.at[0, 3].set(9))
  np.testing.assert_allclose(logits[0, :3], later[0, :3], atol=1e-5)  # positions before 3
  assert not np.allclose(logits[0, 3], later[0, 3])
  other_source = apply(source_BxS.at[0, 0].set(8), target_BxL)
  assert not np.allclose(logits[0, 0], other_source[0, 0])  # cross-attention sees the source


def test_greedy_equals_beam_of_one(params):
  source_BxS = jax.random.randint(jax.random.key(1), (3, 6), 48, 58)
  greedy = jax.jit(lambda x: seq2seq.decode(MODEL, params, x, 8, SPECIAL.bos, 0, beam_size=1))
  memory, valid = MODEL.apply({"params": params}, source_BxS, method="encode")
  logits_fn = lambda x, t: MODEL.apply({"params": params}, x, memory, valid, method="decode")[:, t]
  beam = jax.jit(lambda: seq2seq.beam_search(logits_fn, 3, 1, 8, SPECIAL.bos, 0, SPECIAL.pad)[0])
  np.testing.assert_array_equal(greedy(source_BxS), beam())


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


def test_seq2seq_learns_and_gives_the_same_numbers_on_1_and_8_devices(make_config, tmp_path):
  config = make_config(task="seq2seq", seq_len=8, **{
      "data.source": "synthetic", "data.name": "reverse", "model.max_len": 8,
      "seq2seq.beam_size": 2, "eval_steps": 1, "model.num_layers": 1})
  one = train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = train_and_evaluate(config, str(tmp_path / "eight"), devices=jax.devices())
  scores = [k for k in one if k.startswith(("train/loss", "eval/"))]
  assert {"eval/exact_match", "eval/bleu", "eval/token_accuracy"} <= set(scores)
  for key in scores:  # the same decoding of the same rows; sums added in another order
    assert eight[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
  # Guessing among the 261 ids is right 1 time in 261 (0.004); targets use 11 of them (digits
  # and [EOS]), which 4 steps start to learn (measured: 0.14).
  assert one["eval/token_accuracy"] > 0.05


# Translation, on tfds.testing.mock_data: random letter strings in both languages.

@pytest.fixture
def wmt_config(make_config, tmp_path):
  """A one-layer translation model on wmt14_translate/de-en with a 300-piece SentencePiece."""
  return make_config(task="seq2seq", seq_len=16, **{
      "data.source": "tfds", "data.name": "wmt14_translate/de-en",
      "data.tfds_dir": str(tmp_path / "tfds"), "data.tokenizer": "sentencepiece",
      "data.tokenizer_path": str(tmp_path / "spm" / "wmt.model"), "data.vocab_size": 300,
      "model.max_len": 16, "model.num_layers": 1, "eval_steps": 1, "seq2seq.beam_size": 2})


def test_eval_scores_the_decoded_words_against_the_targets(no_network, wmt_config, monkeypatch):
  import tensorflow_datasets as tfds

  from bigjax import bleu

  with tfds.testing.mock_data(num_examples=8):
    task = Seq2SeqTask(wmt_config)
    batch = next(task.eval_data(4, 1))
  params = jax.jit(task.init)(jax.random.key(0), batch)["params"]
  tok, pad = task.tokenizer, task.special.pad

  def scores(outputs_BxL):  # eval, with `outputs_BxL` standing in for the model's search
    monkeypatch.setattr(task, "_decode", lambda params, source_BxS: jnp.asarray(outputs_BxL))
    return task.eval_summary(jax.device_get(jax.jit(task.eval_sums)(params, batch))).scalars

  perfect = scores(batch["targets"])
  assert perfect["exact_match"] == 1 and perfect["bleu"] == pytest.approx(100)

  # Outputs one piece short of each target: most words right, the last one cut or missing.
  shorter, texts = np.full_like(batch["targets"], pad), []
  for row, target in zip(shorter, batch["targets"]):
    pieces = [int(i) for i in target if i < tok.vocab_size and i != tok.eos_id]
    row[:len(pieces)] = pieces[:-1] + [tok.eos_id]
    texts.append((tok.decode(pieces[:-1]), tok.decode(pieces)))
  expected = bleu.corpus_bleu([bleu.words(h) for h, _ in texts],
                              [bleu.words(r) for _, r in texts], smooth=True)
  short = scores(shorter)
  assert short["exact_match"] == 0 and 0 < short["bleu"] < 100
  assert short["bleu"] == pytest.approx(expected)


@pytest.mark.parametrize("overrides, message", [
    ({"data.name": "wmt14_translate/fr-en"}, "not a known translation dataset"),
    ({"data.tokenizer": "byte"}, "needs data.tokenizer='sentencepiece'"),
    ({"data.source": "text"}, "task=seq2seq reads"),
])
def test_bad_data_settings_fail_in_one_line_before_any_download(no_network, wmt_config,
                                                                overrides, message):
  config = wmt_config.copy_and_resolve_references()
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ConfigError, match=message):
    Seq2SeqTask(config)


def test_translation_trains_offline_on_mock_wmt_and_reports_bleu(no_network, wmt_config,
                                                                 workdir, tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=16):
    final = train_and_evaluate(wmt_config, workdir, devices=jax.devices()[:1])
  # A fresh model's loss is about ln(300 pieces + 5 specials) = 5.72 nats, uniform guessing; 4
  # steps learn which of the mock text's pieces are common (measured: 5.45).
  assert final["eval/loss"] < np.log(300 + 5) - 0.1
  assert set(final) >= {"eval/bleu", "eval/exact_match"}  # decoded and scored
  assert (tmp_path / "spm" / "wmt.model").exists()  # trained on the (mock) train split
  assert not (tmp_path / "tfds").exists()  # nothing was downloaded or prepared


@pytest.mark.parametrize("variant", ["", "t2t"])
def test_wmt_config_sets_only_known_keys_and_checks_out(variant):
  config = wmt14_de_en.get_config(variant)
  known = base.get_config()
  known.lock()
  known.update(config)  # a misspelt key would be a new key, which a locked config refuses
  check_config(config, num_devices=8)
  assert config.data.name in pairs_data.TFDS_TRANSLATION_DATASETS
  assert config.seq_len <= config.model.max_len
