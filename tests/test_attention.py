"""Blockwise causal attention computes what jax.nn.dot_product_attention computes, gradients too."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax.models import gpt
from bigjax.models.blockwise_attention import causal_attention
from test_models import LLAMA, init


def qkv(L, H, G, K=8, B=2, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(L * 100 + H * 10 + G), 3)
  # Scores of a few units, so the softmax is far from uniform and its gradients are not tiny.
  return tuple(2 * jax.random.normal(k, (B, L, h, K), dtype) for k, h in zip(keys, (H, G, G)))


def value_and_grads(attention, q, k, v):
  # A fixed random cotangent: a sum of outputs would make some gradients vanish identically.
  w = jax.random.normal(jax.random.key(7), q.shape, jnp.float32)
  return jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2)))(
          q, k, v)


def reference(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


@pytest.mark.parametrize("L, block_len, H, G", [(24, 8, 4, 4), (20, 8, 4, 2), (10, 3, 4, 1),
                                                 (8, 64, 4, 2)],
                         ids=["mha_3_blocks", "gqa_partial_last_block", "mqa_4_blocks",
                              "gqa_one_block"])
def test_blockwise_matches_dot_product_attention(L, block_len, H, G):
  q, k, v = qkv(L, H, G)
  out = causal_attention(q, k, v, block_len)
  np.testing.assert_allclose(out, reference(q, k, v), rtol=1e-5, atol=1e-5)
  value, grads = value_and_grads(lambda *a: causal_attention(*a, block_len), q, k, v)
  ref_value, ref_grads = value_and_grads(reference, q, k, v)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-4)
  for g, ref in zip(grads, ref_grads):
    assert float(jnp.abs(ref).max()) > 1e-2
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


def test_bfloat16_in_bfloat16_out():
  q, k, v = qkv(16, 4, 2, dtype=jnp.bfloat16)
  _, grads = value_and_grads(lambda *a: causal_attention(*a, 8), q, k, v)
  assert causal_attention(q, k, v, 8).dtype == jnp.bfloat16
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
  ref = reference(*(x.astype(jnp.float32) for x in (q, k, v)))
  np.testing.assert_allclose(causal_attention(q, k, v, 8).astype(jnp.float32), ref, atol=5e-2)


def model_loss_and_grads(cfg, params, x_BxL):
  def loss(p):
    logits_BxLxV = gpt.Decoder(cfg).apply({"params": p}, x_BxL[:, :-1])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, x_BxL[:, 1:]).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


def test_auto_is_blockwise_on_cpu_and_trains_the_same_model():
  """attention="auto" picks the blockwise path when lowering for a CPU, and the model's loss and
  gradients are those of XLA's own attention."""
  cfg = dataclasses.replace(LLAMA, attention_block_len=4)
  params = init(cfg)
  x_BxL = jax.random.randint(jax.random.key(1), (2, 13), 0, cfg.vocab_size)
  loss, grads = model_loss_and_grads(cfg, params, x_BxL)
  ref_loss, ref_grads = model_loss_and_grads(dataclasses.replace(cfg, attention="xla"), params,
                                             x_BxL)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, ref_grads)

  def hlo(attention):
    c = dataclasses.replace(cfg, attention=attention)
    return jax.jit(lambda p: gpt.Decoder(c).apply({"params": p}, x_BxL)[0]).lower(params).as_text()
  # The full 13 x 13 score matrix of XLA's attention never appears; 4-query blocks do.
  full_scores, block_scores = "x13x13xf32>", "x4x4xf32>"
  assert full_scores in hlo("xla") and full_scores not in hlo("auto")
  assert block_scores in hlo("auto")


def segments(B, L):
  """Segment ids of packed rows: runs of 1, 2, 3 ... of random lengths, then 0s (padding)."""
  rng = np.random.default_rng(L)
  ids = np.zeros((B, L), np.int32)
  for b in range(B):
    cuts = np.sort(rng.choice(np.arange(1, L - 2), size=3, replace=False))
    for segment, (start, stop) in enumerate(zip([0, *cuts], [*cuts, L - 2]), start=1):
      ids[b, start:stop] = segment
  return jnp.asarray(ids)


@pytest.mark.parametrize("L, block_len, H, G", [(24, 8, 4, 2), (10, 3, 4, 1)],
                         ids=["gqa_3_blocks", "mqa_4_blocks"])
def test_blockwise_with_segments_matches_xla_with_a_segment_mask(L, block_len, H, G):
  """Packed rows: a query sees earlier keys of its own segment only, in values and gradients."""
  q, k, v = qkv(L, H, G)
  segment_ids_BxL = segments(q.shape[0], L)
  same_Bx1xLxL = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
  masked = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=same_Bx1xLxL,
                                                        is_causal=True, implementation="xla")
  blockwise = lambda q, k, v: causal_attention(q, k, v, block_len, segment_ids_BxL)
  np.testing.assert_allclose(blockwise(q, k, v), masked(q, k, v), rtol=1e-5, atol=1e-5)
  # The mask matters: without it the first query of segment 2 would see segment 1's keys.
  assert not np.allclose(causal_attention(q, k, v, block_len), masked(q, k, v), atol=1e-3)
  value, grads = value_and_grads(blockwise, q, k, v)
  ref_value, ref_grads = value_and_grads(masked, q, k, v)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-4)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)
