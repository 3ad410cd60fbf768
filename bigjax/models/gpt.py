"""Decoder-only Transformer language model: GPT-2 and Llama are two settings of one module.

GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
Llama: rotary positions, RMSNorm, SwiGLU MLP, no biases, untied output, grouped-query attention.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models import layers
from bigjax.models.layers import TransformerConfig


class DecoderBlock(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

  cfg: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxD, cache, positions_BxL, cache_index, segment_ids_BxL):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    h_BxLxD = layers.norm(cfg, "attn_norm")(x_BxLxD)
    h_BxLxD, cache = layers.Attention(cfg, causal=True, name="attn")(
        h_BxLxD, positions_BxL, cache=cache, cache_index=cache_index,
        segment_ids_BxL=segment_ids_BxL)
    x_BxLxD = x_BxLxD + drop(h_BxLxD)
    h_BxLxD = layers.Mlp(cfg, name="mlp")(layers.norm(cfg, "mlp_norm")(x_BxLxD))
    x_BxLxD = layers.constrain(x_BxLxD + drop(h_BxLxD))
    return x_BxLxD, cache


class Decoder(nn.Module):
  """tokens_BxL -> logits_BxLxV, optionally reading and writing a KV cache for generation.

  With a cache, the tokens are written from `cache_index`: a scalar, or one index per row (rows
  at different lengths, as in batched generation). Positions default to the cache index onwards.
  Packed rows (several examples per row) pass each token's position within its example and
  `segment_ids_BxL`, which keeps attention inside each example.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BxL, positions_BxL=None, cache=None, cache_index=0, train=False,
               segment_ids_BxL=None):
    cfg = self.cfg
    if positions_BxL is None:
      start_Bx1 = jnp.broadcast_to(cache_index, tokens_BxL.shape[:1])[:, None]
      positions_BxL = start_Bx1 + jnp.arange(tokens_BxL.shape[1])
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                     embedding_init=layers.normal_init(0.02, ("vocab", "embed")), name="embed")
    x_BxLxD = embed(tokens_BxL)
    if cfg.positions == "learned":
      pos_embed = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                           embedding_init=layers.normal_init(0.01, (None, "embed")), name="pos_embed")
      x_BxLxD = x_BxLxD + pos_embed(positions_BxL)
    x_BxLxD = layers.constrain(nn.Dropout(cfg.dropout, deterministic=not train)(x_BxLxD))

    block = layers.stack_layers(DecoderBlock, cfg, num_broadcast_args=3)
    if cfg.scan_layers:
      x_BxLxD, cache = block(cfg, deterministic=not train, name="layers")(
          x_BxLxD, cache, positions_BxL, cache_index, segment_ids_BxL)
    else:
      new_cache = []
      for i in range(cfg.num_layers):
        x_BxLxD, layer_cache = block(cfg, deterministic=not train, name=f"layer_{i}")(
            x_BxLxD, None if cache is None else cache[i], positions_BxL, cache_index,
            segment_ids_BxL)
        new_cache.append(layer_cache)
      cache = None if cache is None else new_cache

    x_BxLxD = layers.norm(cfg, "final_norm")(x_BxLxD)
    if cfg.tie_embeddings:
      logits_BxLxV = layers.logits(cfg, embed, x_BxLxD)
    else:
      logits_BxLxV = layers.dense(cfg, cfg.vocab_size, ("embed", "vocab"), "unembed",
                                  out_dtype=jnp.float32)(x_BxLxD)
    return logits_BxLxV, cache


def init_cache(cfg: TransformerConfig, batch: int, max_len: int):
  """Zeroed KV cache in the layout the decoder scans over (stacked layers or a list)."""
  shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  if cfg.scan_layers:
    shape = (cfg.num_layers,) + shape
    return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
  return [{"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
          for _ in range(cfg.num_layers)]


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
