"""Causal self-attention computed block by block, for CPUs.

XLA's generic attention (what `jax.nn.dot_product_attention` lowers to off GPU) computes every
one of the L x L scores, masks the upper half away, and lets autodiff differentiate through the
softmax's max, exp, sum and divide: on a CPU, where those passes over a B x H x L x L array are
memory-bound, attention at gpt_tiny's shape (L=256, width 128) cost more than all the model's
dense layers together.

This version does less of both:
  * queries go in blocks of `block_len`, and block i only meets keys up to its own end, so the
    masked upper triangle is never computed (5/8 of the work with 4 blocks);
  * a custom VJP saves the unnormalised probabilities E = exp(S - rowmax) and row sums l, and
    the backward pass uses the identity rowsum(P * dP) = rowsum(dO * O) (FlashAttention's
    trick): four matmuls and one elementwise pass per block, nothing differentiated through.

What it gains for a whole training step is in the README's throughput table, measured with
`scripts/bench.py --config.model.attention=xla` against the default.

Packed sequences (several examples in one row) pass `segment_ids_BxL`: a query then sees only
earlier keys of its own segment, so packed examples never attend to each other.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def causal_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, block_len: int = 64,
                     segment_ids_BxL=None):
  """softmax(Q K^T / sqrt(K) + causal mask) V, with G key/value heads shared by H / G queries;
  with `segment_ids_BxL`, the mask also hides keys of other segments."""
  B, L, H, K = q_BxLxHxK.shape
  G = k_BxLxGxK.shape[2]
  R = H // G
  # Key/value heads to the front, so a block's matmuls are batched over (B, G). The R query
  # heads that share a key/value head become R rows per position: row j is position j // R.
  q_BxGxLRxK = q_BxLxHxK.reshape(B, L, G, R, K).transpose(0, 2, 1, 3, 4).reshape(B, G, L * R, K)
  k_BxGxLxK = k_BxLxGxK.transpose(0, 2, 1, 3)
  v_BxGxLxK = v_BxLxGxK.transpose(0, 2, 1, 3)
  out_BxGxLRxK = _attention(q_BxGxLRxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, R, block_len)
  return out_BxGxLRxK.reshape(B, G, L, R, K).transpose(0, 2, 1, 3, 4).reshape(B, L, H, K)


def _blocks(length: int, block_len: int) -> list[tuple[int, int]]:
  """(first, end) positions of each query block."""
  return [(first, min(first + block_len, length)) for first in range(0, length, block_len)]


def _scores(q_BxGxlRxK, k_BxGxsxK, segment_ids_BxL, first: int, R: int):
  """Scaled scores of the queries from position `first` against keys 0.., future keys (and keys
  of other segments) at -inf."""
  s_BxGxlRxs = jnp.einsum("bgqk,bgsk->bgqs", q_BxGxlRxK, k_BxGxsxK,
                          preferred_element_type=jnp.float32) / jnp.sqrt(q_BxGxlRxK.shape[-1])
  lR, s = s_BxGxlRxs.shape[-2:]
  position_lR = first + jnp.arange(lR) // R
  visible_1x1xlRxs = (position_lR[:, None] >= jnp.arange(s)[None, :])[None, None]
  if segment_ids_BxL is not None:
    query_segment_BxlR = segment_ids_BxL[:, position_lR]
    visible_1x1xlRxs = visible_1x1xlRxs & (
        query_segment_BxlR[:, None, :, None] == segment_ids_BxL[:, None, None, :s])
  return jnp.where(visible_1x1xlRxs, s_BxGxlRxs, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q_BxGxLRxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, R, block_len):
  return _forward(q_BxGxLRxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, R, block_len)[0]


def _forward(q_BxGxLRxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, R, block_len):
  outs, exps, sums = [], [], []
  for first, end in _blocks(k_BxGxLxK.shape[2], block_len):
    s_BxGxlRxs = _scores(q_BxGxLRxK[:, :, first * R:end * R], k_BxGxLxK[:, :, :end],
                         segment_ids_BxL, first, R)
    # Every query sees at least itself (its own segment included), so each row's max is finite.
    e_BxGxlRxs = jnp.exp(s_BxGxlRxs - jnp.max(s_BxGxlRxs, axis=-1, keepdims=True))
    sum_BxGxlRx1 = jnp.sum(e_BxGxlRxs, axis=-1, keepdims=True)
    pv_BxGxlRxK = jnp.einsum("bgqs,bgsk->bgqk", e_BxGxlRxs, v_BxGxLxK[:, :, :end],
                             preferred_element_type=jnp.float32)
    outs.append(pv_BxGxlRxK / sum_BxGxlRx1)
    exps.append(e_BxGxlRxs)
    sums.append(sum_BxGxlRx1)
  out_BxGxLRxK = jnp.concatenate(outs, axis=2)
  residuals = (q_BxGxLRxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, exps, sums, out_BxGxLRxK)
  return out_BxGxLRxK.astype(q_BxGxLRxK.dtype), residuals


def _backward(R, block_len, residuals, dout_BxGxLRxK):
  # E already holds zeros where the mask hid a key, so the backward pass needs no mask itself.
  q_BxGxLRxK, k_BxGxLxK, v_BxGxLxK, segment_ids_BxL, exps, sums, out_BxGxLRxK = residuals
  scale = 1 / jnp.sqrt(q_BxGxLRxK.shape[-1])
  dout_BxGxLRxK = dout_BxGxLRxK.astype(jnp.float32)
  # rowsum(P * dP) for every query, from the output alone: dP = dO V^T, so it is rowsum(dO * O).
  pdp_BxGxLRx1 = jnp.sum(dout_BxGxLRxK * out_BxGxLRxK, axis=-1, keepdims=True)
  dq_blocks = []
  dk_BxGxLxK = jnp.zeros(k_BxGxLxK.shape, jnp.float32)
  dv_BxGxLxK = jnp.zeros(v_BxGxLxK.shape, jnp.float32)
  blocks = _blocks(k_BxGxLxK.shape[2], block_len)
  for (first, end), e_BxGxlRxs, sum_BxGxlRx1 in zip(blocks, exps, sums):
    rows = slice(first * R, end * R)
    # P = E / l: dividing the small dO and rowsum terms by l rather than the big E.
    dout_l_BxGxlRxK = dout_BxGxLRxK[:, :, rows] / sum_BxGxlRx1
    # dV and dK are formed as K x S products and transposed after: the small operand is then
    # the one read across rows, and the big E / dS blocks are never copied into transposes.
    dv_BxGxLxK = dv_BxGxLxK.at[:, :, :end].add(
        jnp.einsum("bgqk,bgqs->bgks", dout_l_BxGxlRxK, e_BxGxlRxs).swapaxes(2, 3))
    de_BxGxlRxs = jnp.einsum("bgqk,bgsk->bgqs", dout_l_BxGxlRxK, v_BxGxLxK[:, :, :end],
                             preferred_element_type=jnp.float32)
    ds_BxGxlRxs = e_BxGxlRxs * (de_BxGxlRxs - pdp_BxGxLRx1[:, :, rows] / sum_BxGxlRx1)
    dq_blocks.append(jnp.einsum("bgqs,bgsk->bgqk", ds_BxGxlRxs, k_BxGxLxK[:, :, :end]) * scale)
    dk_BxGxLxK = dk_BxGxLxK.at[:, :, :end].add(
        jnp.einsum("bgqk,bgqs->bgks", q_BxGxLRxK[:, :, rows], ds_BxGxlRxs).swapaxes(2, 3) * scale)
  dq_BxGxLRxK = jnp.concatenate(dq_blocks, axis=2)
  no_gradient = None if segment_ids_BxL is None else np.zeros(segment_ids_BxL.shape,
                                                               jax.dtypes.float0)
  return (dq_BxGxLRxK.astype(q_BxGxLRxK.dtype), dk_BxGxLxK.astype(k_BxGxLxK.dtype),
          dv_BxGxLxK.astype(v_BxGxLxK.dtype), no_gradient)


_attention.defvjp(_forward, _backward)
