"""BERT family: masking statistics, the loss only on chosen positions, bidirectional attention,
pretrained weights loaded by init_from, frozen params kept, and runs on 1 and 8 devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigjax import finetune
from bigjax.config_checks import ConfigError
from bigjax.data import mlm as mlm_data
from bigjax.data.tokenizers import SpecialTokens
from bigjax.models import bert
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.mlm import MaskedLanguageModelTask
from bigjax.tasks.text_classify import TextClassificationTask
from bigjax.train import train_and_evaluate

SPECIAL = SpecialTokens(256)


def mlm_config(make_config, **overrides):
  return make_config(**{"task": "mlm", **overrides})


def test_masking_proportions():
  rng = np.random.default_rng(0)
  tokens_L = rng.integers(1, 256, size=100_000).astype(np.int32)
  maskable_L = np.ones_like(tokens_L, bool)
  maskable_L[:10] = False  # e.g. [CLS]: never chosen
  inputs_L, weights_L = mlm_data.mask_tokens(tokens_L, maskable_L, rng, SPECIAL, 0.15)
  chosen = weights_L == 1
  assert chosen.sum() == round(0.15 * maskable_L.sum()) and not chosen[:10].any()
  assert (inputs_L[~chosen] == tokens_L[~chosen]).all()  # unchosen positions are untouched
  masked = (inputs_L == SPECIAL.mask)[chosen].mean()
  kept = (inputs_L == tokens_L)[chosen].mean()  # kept, plus random draws equal to the original
  random = 1 - masked - kept
  # 15,000 chosen positions: the standard error of each share is below 0.004.
  assert abs(masked - 0.8) < 0.015 and abs(kept - 0.1) < 0.015 and abs(random - 0.1) < 0.015
  assert (inputs_L[chosen] < 256).sum() + (inputs_L[chosen] == SPECIAL.mask).sum() == chosen.sum()


def test_loss_counts_only_chosen_positions(make_config):
  task = MaskedLanguageModelTask(mlm_config(make_config))
  batch = next(iter(task.train_data(4, seed=0)))
  params = task.init(jax.random.key(0), batch)["params"]
  loss = task.loss(params, batch, None, train=False).total
  # Changing a target where the weight is 0 leaves the loss alone; where it is 1 it does not.
  unchosen = np.argwhere(batch["weights"] == 0)[0]
  chosen = np.argwhere(batch["weights"] == 1)[0]
  for index, should_change in ((unchosen, False), (chosen, True)):
    changed = {k: v.copy() for k, v in batch.items()}
    changed["targets"][tuple(index)] = (changed["targets"][tuple(index)] + 1) % 256
    new_loss = task.loss(params, changed, None, train=False).total
    assert (abs(float(new_loss) - float(loss)) > 1e-6) == should_change


def test_encoder_is_bidirectional():
  cfg = TransformerConfig(vocab_size=SPECIAL.vocab_size, num_layers=2, num_heads=2,
                          num_kv_heads=2, d_model=16, d_ff=32, max_len=8, causal=False)
  model = bert.MaskedLM(cfg)
  tokens_BxL = jnp.arange(1, 9)[None]
  valid_BxL = jnp.ones_like(tokens_BxL, bool)
  params = model.init(jax.random.key(0), tokens_BxL, valid_BxL)
  logits, _ = model.apply(params, tokens_BxL, valid_BxL)
  changed, _ = model.apply(params, tokens_BxL.at[0, -1].set(100), valid_BxL)
  assert not np.allclose(logits[0, 0], changed[0, 0])  # a later token changes the first output
  # Padding is invisible: changing a masked-out token changes no real position's output.
  pad_BxL = valid_BxL.at[0, -1].set(False)
  a, _ = model.apply(params, tokens_BxL, pad_BxL)
  b, _ = model.apply(params, tokens_BxL.at[0, -1].set(100), pad_BxL)
  np.testing.assert_allclose(a[0, :-1], b[0, :-1], atol=1e-5)


def test_mlm_with_nsp_learns_and_gives_the_same_numbers_on_1_and_8_devices(make_config,
                                                                         tmp_path):
  config = mlm_config(make_config, **{"mlm.nsp": True, "model.token_types": 2})
  one = train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = train_and_evaluate(config, str(tmp_path / "eight"), devices=jax.devices())
  scores = [k for k in one if k.startswith(("train/loss", "train/mlm", "train/nsp", "eval/"))]
  assert {"eval/masked_accuracy", "eval/nsp_accuracy", "train/nsp_loss"} <= set(scores)
  for key in scores:  # sums over the same rows, added in another order
    assert eight[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
  # Guessing among the 261 ids is right 1 time in 261 (0.004) with a loss of ln 261 = 5.56; the
  # commonest byte (space) is 31% of this corpus, which 4 steps learn (measured: 0.25, 5.30).
  assert one["eval/masked_accuracy"] > 0.1
  assert one["eval/loss"] < np.log(SPECIAL.vocab_size) - 0.1


def test_nsp_needs_token_types(make_config, workdir):
  with pytest.raises(ConfigError, match="token_types=2"):
    train_and_evaluate(mlm_config(make_config, **{"mlm.nsp": True}), workdir)


def _params(workdir):
  state_dir = finetune.state_directory(workdir)
  return ocp.PyTreeCheckpointer().restore(state_dir)["params"]


def test_init_from_loads_pretrained_and_freeze_keeps_it(make_config, tmp_path):
  pretrained = str(tmp_path / "mlm")
  train_and_evaluate(mlm_config(make_config), pretrained, devices=jax.devices()[:1])
  saved = _params(pretrained)

  config = make_config(task="text_classify", **{"data.source": "stdlib", "init_from": pretrained,
                                                "freeze": "^(embed|encoder)/", "steps": 3})
  task = TextClassificationTask(config)
  dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in task.batch_spec(2).items()}
  # The loop's own fresh initialisation (same key), before anything is copied or trained.
  fresh = nn.meta.unbox(task.init(jax.random.fold_in(jax.random.key(config.seed), 0),
                                  dummy)["params"])
  loaded = finetune.load_pretrained(fresh, fresh, pretrained)
  for name in ("embed", "encoder"):
    jax.tree.map(np.testing.assert_array_equal, loaded[name], saved[name])
  jax.tree.map(np.testing.assert_array_equal, loaded["classifier"], fresh["classifier"])

  # Through the loop, encoder frozen: after 3 steps it still equals the checkpoint, the head moved.
  tuned = str(tmp_path / "tuned")
  train_and_evaluate(config, tuned, devices=jax.devices()[:8])
  after = _params(tuned)
  for name in ("embed", "encoder"):
    jax.tree.map(np.testing.assert_array_equal, after[name], saved[name])
  assert not np.array_equal(after["classifier"]["out"]["kernel"],
                            fresh["classifier"]["out"]["kernel"])


def test_freeze_pattern_errors(make_config, workdir):
  with pytest.raises(ConfigError, match="matches no parameter"):
    train_and_evaluate(mlm_config(make_config, freeze="^nothing_here"), workdir)
