"""Encoder-decoder Transformer, and greedy and beam-search decoding from it.

The encoder is bert.Encoder (bidirectional, padding masked). Each decoder block attends causally
to the target so far, then across to the encoder output (padding masked), then applies the MLP.
Source and target share one token embedding, which is also the (tied) output projection.
Training uses teacher forcing: the decoder reads [BOS] y and predicts y [EOS] in one pass.

Decoding runs the decoder over a fixed-length buffer at every step and reads position t: the
decoder is causal, so position t sees only tokens before it and the unfilled tail cannot leak in.
That costs a full decoder pass per token (no KV cache), which is fine for the short outputs here.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models import bert, layers
from bigjax.models.layers import TransformerConfig


class DecoderBlock(nn.Module):
  """Pre-norm: x + self_attn(norm(x)) (causal), x + cross_attn(norm(x), memory), x + mlp(norm(x))."""

  cfg: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxD, cache, positions_BxL, memory_BxSxD, cross_mask_BxLxS):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    h_BxLxD, _ = layers.Attention(cfg, causal=True, name="self_attn")(
        layers.norm(cfg, "self_attn_norm")(x_BxLxD), positions_BxL)
    x_BxLxD = x_BxLxD + drop(h_BxLxD)
    h_BxLxD, _ = layers.Attention(cfg, causal=False, name="cross_attn")(
        layers.norm(cfg, "cross_attn_norm")(x_BxLxD), kv_BxSxD=memory_BxSxD,
        mask_BxLxS=cross_mask_BxLxS)
    x_BxLxD = x_BxLxD + drop(h_BxLxD)
    h_BxLxD = layers.Mlp(cfg, name="mlp")(layers.norm(cfg, "mlp_norm")(x_BxLxD))
    return layers.constrain(x_BxLxD + drop(h_BxLxD)), cache


class Decoder(nn.Module):
  """(targets so far tokens_BxL, encoder output memory_BxSxD, source_valid_BxS) -> logits_BxLxV."""

  cfg: TransformerConfig
  embed: nn.Module

  @nn.compact
  def __call__(self, tokens_BxL, memory_BxSxD, source_valid_BxS, train: bool = False):
    cfg = self.cfg
    B, L = tokens_BxL.shape
    positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
    x_BxLxD = self.embed(tokens_BxL)
    if cfg.positions == "learned":
      x_BxLxD += nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                          embedding_init=layers.normal_init(0.01, (None, "embed")),
                          name="pos_embed")(positions_BxL)
    x_BxLxD = layers.constrain(nn.Dropout(cfg.dropout, deterministic=not train)(x_BxLxD))
    S = memory_BxSxD.shape[1]
    cross_mask_BxLxS = jnp.broadcast_to(source_valid_BxS[:, None, :], (B, L, S))

    block = layers.stack_layers(DecoderBlock, cfg, num_broadcast_args=3)
    args = (positions_BxL, memory_BxSxD, cross_mask_BxLxS)
    if cfg.scan_layers:
      x_BxLxD, _ = block(cfg, deterministic=not train, name="layers")(x_BxLxD, None, *args)
    else:
      for i in range(cfg.num_layers):
        x_BxLxD, _ = block(cfg, deterministic=not train, name=f"layer_{i}")(x_BxLxD, None, *args)
    return layers.logits(cfg, self.embed, layers.norm(cfg, "final_norm")(x_BxLxD))


class EncoderDecoder(nn.Module):
  """(source_BxS, decoder inputs_BxL) -> logits_BxLxV; `encode` and `decode` for decoding."""

  cfg: TransformerConfig
  pad_id: int

  def setup(self):
    self.embed = bert.token_embedding(self.cfg)
    self.encoder = bert.Encoder(self.cfg, self.embed)
    self.decoder = Decoder(self.cfg, self.embed)

  def encode(self, source_BxS, train: bool = False):
    source_valid_BxS = source_BxS != self.pad_id
    return self.encoder(source_BxS, source_valid_BxS, train=train), source_valid_BxS

  def decode(self, tokens_BxL, memory_BxSxD, source_valid_BxS, train: bool = False):
    return self.decoder(tokens_BxL, memory_BxSxD, source_valid_BxS, train=train)

  def __call__(self, source_BxS, tokens_BxL, train: bool = False):
    memory_BxSxD, source_valid_BxS = self.encode(source_BxS, train)
    return self.decode(tokens_BxL, memory_BxSxD, source_valid_BxS, train)


# Decoding. `logits_fn(inputs_NxT, t) -> logits_NxV` gives the next-token logits at position t
# of N decoder-input rows; row n's inputs are [BOS] then the tokens chosen so far.

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _allowed(logits_NxV, finished_N, eos: int, pad: int, bos: int):
  """Log-probs where live rows never emit [PAD] or [BOS], and finished rows emit only [PAD], free."""
  logp_NxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32).at[:, (pad, bos)].set(-jnp.inf))
  pad_only_V = jnp.full(logp_NxV.shape[-1], -jnp.inf).at[pad].set(0.0)
  return jnp.where(finished_N[:, None], pad_only_V, logp_NxV)


def greedy_search(logits_fn: LogitsFn, batch: int, max_len: int, bos: int, eos: int, pad: int):
  """outputs_BxT: the most likely token at every step, [PAD] after [EOS]."""
  inputs_BxT = jnp.full((batch, max_len), pad, jnp.int32).at[:, 0].set(bos)

  def step(carry, t):
    inputs_BxT, finished_B = carry
    token_B = jnp.argmax(_allowed(logits_fn(inputs_BxT, t), finished_B, eos, pad, bos), -1)
    inputs_BxT = jax.lax.dynamic_update_slice_in_dim(
        inputs_BxT, token_B[:, None].astype(jnp.int32), jnp.minimum(t + 1, max_len - 1), axis=1)
    return (inputs_BxT, finished_B | (token_B == eos)), token_B

  _, outputs_TxB = jax.lax.scan(step, (inputs_BxT, jnp.zeros(batch, bool)), jnp.arange(max_len))
  return outputs_TxB.T.astype(jnp.int32)


def beam_search(logits_fn: LogitsFn, batch: int, beam_size: int, max_len: int, bos: int,
                eos: int, pad: int, length_penalty: float = 0.0):
  """(outputs_BxT, score_B): the best of `beam_size` hypotheses kept at every step.

  Each step extends every beam by every token and keeps the K highest total log-probs. Finished
  beams stay in the beam, extended only by [PAD] at no cost, so they compete with live ones on
  equal terms; live scores only fall, so a finished beam that is still kept cannot be overtaken
  later by its own descendants. At the end hypotheses are ranked by log-prob / ((5 + length) / 6)
  ** length_penalty (GNMT), which with length_penalty=0 is the plain log-prob.
  """
  B, K, T = batch, beam_size, max_len
  inputs_BxKxT = jnp.full((B, K, T), pad, jnp.int32).at[:, :, 0].set(bos)
  # Only beam 0 is live at the start, so the first step does not pick K copies of one token.
  score_BxK = jnp.where(jnp.arange(K) == 0, 0.0, -jnp.inf)[None].repeat(B, 0)
  state = (inputs_BxKxT, jnp.full((B, K, T), pad, jnp.int32), score_BxK,
           jnp.zeros((B, K), bool), jnp.zeros((B, K), jnp.int32))

  def step(state, t):
    inputs_BxKxT, outputs_BxKxT, score_BxK, finished_BxK, length_BxK = state
    logits_NxV = logits_fn(inputs_BxKxT.reshape(B * K, T), t)
    logp_NxV = _allowed(logits_NxV, finished_BxK.reshape(-1), eos, pad, bos)
    V = logp_NxV.shape[-1]
    total_BxKV = (score_BxK[..., None] + logp_NxV.reshape(B, K, V)).reshape(B, K * V)
    score_BxK, flat_BxK = jax.lax.top_k(total_BxKV, K)
    parent_BxK, token_BxK = flat_BxK // V, (flat_BxK % V).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, parent_BxK.reshape((B, K) + (1,) * (x.ndim - 2)), 1)
    inputs_BxKxT, outputs_BxKxT = take(inputs_BxKxT), take(outputs_BxKxT)
    finished_BxK, length_BxK = take(finished_BxK), take(length_BxK)
    outputs_BxKxT = outputs_BxKxT.at[:, :, t].set(token_BxK)
    inputs_BxKxT = jax.lax.dynamic_update_slice_in_dim(
        inputs_BxKxT, token_BxK[..., None], jnp.minimum(t + 1, T - 1), axis=2)
    length_BxK = length_BxK + ~finished_BxK
    finished_BxK = finished_BxK | (token_BxK == eos)
    return (inputs_BxKxT, outputs_BxKxT, score_BxK, finished_BxK, length_BxK), None

  state, _ = jax.lax.scan(step, state, jnp.arange(T))
  _, outputs_BxKxT, score_BxK, _, length_BxK = state
  ranked_BxK = score_BxK / ((5.0 + length_BxK) / 6.0) ** length_penalty
  best_B = jnp.argmax(ranked_BxK, -1)
  return (jnp.take_along_axis(outputs_BxKxT, best_B[:, None, None], 1)[:, 0],
          jnp.take_along_axis(score_BxK, best_B[:, None], 1)[:, 0])


def decode(model: EncoderDecoder, params, source_BxS, max_len: int, bos: int, eos: int,
           beam_size: int = 1, length_penalty: float = 0.0):
  """outputs_BxT from the model: greedy for beam_size 1, beam search otherwise."""
  B = source_BxS.shape[0]
  memory_BxSxD, valid_BxS = model.apply({"params": params}, source_BxS, method="encode")
  if beam_size > 1:  # every beam reads its own example's encoding
    memory_BxSxD = memory_BxSxD.repeat(beam_size, 0)
    valid_BxS = valid_BxS.repeat(beam_size, 0)

  def logits_fn(inputs_NxT, t):
    logits_NxTxV = model.apply({"params": params}, inputs_NxT, memory_BxSxD, valid_BxS,
                               method="decode")
    return jax.lax.dynamic_index_in_dim(logits_NxTxV, t, axis=1, keepdims=False)

  if beam_size == 1:
    return greedy_search(logits_fn, B, max_len, bos, eos, model.pad_id)
  return beam_search(logits_fn, B, beam_size, max_len, bos, eos, model.pad_id,
                     length_penalty)[0]
