"""Transformer building blocks shared by every model family.

Tensor names end in their shape, with these letters:
  B batch, L query length, S key length, D model width, H query heads, G key/value heads,
  K head dim, F MLP width, V vocabulary, N layers.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, `vocab`, ...); the config's
`sharding_rules` map those names onto the `data`/`fsdp`/`tensor` mesh.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigjax.config_checks import ConfigError
from bigjax.models import blockwise_attention

POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
# "auto": blockwise on CPUs, jax.nn.dot_product_attention's own pick elsewhere (see Attention).
ATTENTION = ("auto", "blockwise", "xla", "cudnn")

Cache = dict[str, jax.Array]  # {"k": BxSxGxK, "v": BxSxGxK} for one layer (NxBxSxGxK when scanned)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Model hyperparameters, built once from the config; modules never read the global config."""

  vocab_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  d_model: int
  d_ff: int
  max_len: int
  positions: str = "learned"
  rope_theta: float = 10000.0
  norm: str = "layernorm"
  mlp: str = "gelu"
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout: float = 0.0
  remat: str = "none"
  scan_layers: bool = True
  attention: str = "auto"
  attention_block_len: int = 64
  causal: bool = True
  dtype: Any = jnp.float32

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, **overrides):
    m = config.model
    fields = dict(
        vocab_size=vocab_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads or m.num_heads,
        d_model=m.d_model,
        d_ff=m.d_ff,
        max_len=m.max_len,
        positions=m.positions,
        rope_theta=m.rope_theta,
        norm=m.norm,
        mlp=m.mlp,
        use_bias=m.use_bias,
        tie_embeddings=m.tie_embeddings,
        dropout=m.dropout,
        remat=m.remat,
        scan_layers=m.scan_layers,
        attention=m.attention,
        attention_block_len=m.attention_block_len,
        dtype=jnp.dtype(config.dtype),
    )
    fields.update(overrides)
    if config.seq_len > m.max_len:
      raise ConfigError(f"seq_len={config.seq_len} is longer than model.max_len={m.max_len}; "
                        f"raise model.max_len or shorten seq_len")
    return cls(**fields).checked()

  def checked(self) -> "TransformerConfig":
    """Itself, once every setting is known to work; a one-line ConfigError otherwise."""
    choices = {"positions": POSITIONS, "norm": NORMS, "mlp": MLPS, "attention": ATTENTION,
               "remat": ("none", *REMAT_POLICIES)}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"model.{name}={getattr(self, name)!r}; use one of "
                          f"{', '.join(allowed)}")
    for name in ("num_layers", "num_heads", "num_kv_heads", "d_model", "d_ff", "max_len",
                 "attention_block_len"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"model.{name}={getattr(self, name)} must be positive")
    if self.d_model % self.num_heads:
      raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.num_heads="
                        f"{self.num_heads}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"model.num_heads={self.num_heads} is not divisible by "
                        f"model.num_kv_heads={self.num_kv_heads}")
    if not 0 <= self.dropout < 1:
      raise ConfigError(f"model.dropout={self.dropout} must lie in [0, 1)")
    return self

  def check_mesh(self, mesh_shape: dict[str, int]) -> None:
    """Tensor parallelism splits heads, key/value heads and the MLP width: each must divide."""
    tensor = mesh_shape["tensor"]
    for name in ("num_heads", "num_kv_heads", "d_ff"):
      if getattr(self, name) % tensor:
        raise ConfigError(f"model.{name}={getattr(self, name)} is not divisible by mesh.tensor="
                          f"{tensor}; pick a tensor axis that divides it")


def normal_init(std: float, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


class Dense(nn.Module):
  """x @ W (+ b) contracting the trailing `len(in_axes_shape)` input dims into `features`.

  The kernel is created in its final multi-dimensional shape (e.g. D x H x K), so its logical
  axis names apply directly (DenseGeneral builds a flat kernel first and reshapes it).
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of the kernel: contracted dims, then features
  cfg: TransformerConfig
  std: float = 0.02

  @nn.compact
  def __call__(self, x):
    n_in = len(self.axes) - len(self.features)
    kernel = self.param("kernel", normal_init(self.std, self.axes),
                        x.shape[-n_in:] + self.features, jnp.float32)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.cfg.dtype), jnp.asarray(kernel, self.cfg.dtype),
                            (contract, ((), ())))
    if self.cfg.use_bias:
      bias = self.param("bias", _zeros(self.axes[n_in:]), self.features, jnp.float32)
      y = y + bias.astype(self.cfg.dtype)
    return y


def dense(cfg: TransformerConfig, features, axes, name: str, std: float = 0.02) -> Dense:
  """A Dense with GPT-2 init (normal 0.02) and named kernel axes (inputs..., outputs...)."""
  features = features if isinstance(features, tuple) else (features,)
  return Dense(features, axes, cfg, std, name=name)


def norm(cfg: TransformerConfig, name: str) -> nn.Module:
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, param_dtype=jnp.float32,
                      scale_init=_ones(("act_embed",)), name=name)
  return nn.LayerNorm(epsilon=1e-5, use_bias=cfg.use_bias, dtype=cfg.dtype,
                      param_dtype=jnp.float32, scale_init=_ones(("act_embed",)),
                      bias_init=_zeros(("act_embed",)), name=name)


def rope(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding: rotates pairs (i, i + K/2) by position-dependent angles."""
  half = x_BxLxHxK.shape[-1] // 2
  freq_half = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxLx1xhalf = (positions_BxL[..., None].astype(jnp.float32) * freq_half)[:, :, None, :]
  sin, cos = jnp.sin(angle_BxLx1xhalf), jnp.cos(angle_BxLx1xhalf)
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


class Attention(nn.Module):
  """Multi-head attention with grouped-query heads, optional RoPE and an optional KV cache.

  Self-attention when `kv_BxSxD` is None, cross-attention otherwise. Causal full-sequence calls
  (training, scoring) run `blockwise_attention` on CPUs and `jax.nn.dot_product_attention` with
  `is_causal` elsewhere, which picks cuDNN flash attention on GPUs. Cached decoding writes the new
  keys at `cache_index` and masks the unwritten slots.
  """

  cfg: TransformerConfig
  causal: bool = True

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL=None, kv_BxSxD=None, cache: Cache | None = None,
               cache_index=None, mask_BxLxS=None):
    cfg = self.cfg
    H, G, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kv_input = x_BxLxD if kv_BxSxD is None else kv_BxSxD
    q_BxLxHxK = dense(cfg, (H, K), ("embed", "heads", "head_dim"), "query")(x_BxLxD)
    k_BxSxGxK = dense(cfg, (G, K), ("embed", "kv_heads", "head_dim"), "key")(kv_input)
    v_BxSxGxK = dense(cfg, (G, K), ("embed", "kv_heads", "head_dim"), "value")(kv_input)
    if cfg.positions == "rope" and kv_BxSxD is None:
      q_BxLxHxK = rope(q_BxLxHxK, positions_BxL, cfg.rope_theta)
      k_BxSxGxK = rope(k_BxSxGxK, positions_BxL, cfg.rope_theta)

    is_causal = self.causal and kv_BxSxD is None
    mask = None if mask_BxLxS is None else mask_BxLxS[:, None]
    if cache is not None:
      # Write this call's keys into the cache; a query at position p sees cache slots <= p.
      k_BxSxGxK = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BxSxGxK, cache_index, axis=1)
      v_BxSxGxK = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BxSxGxK, cache_index, axis=1)
      cache = {"k": k_BxSxGxK, "v": v_BxSxGxK}
      slot_S = jnp.arange(k_BxSxGxK.shape[1])
      query_pos_L = cache_index + jnp.arange(x_BxLxD.shape[1])
      mask = (slot_S[None, :] <= query_pos_L[:, None])[None, None]
      is_causal = False

    k_BxSxGxK, v_BxSxGxK = k_BxSxGxK.astype(q_BxLxHxK.dtype), v_BxSxGxK.astype(q_BxLxHxK.dtype)

    def library(q, k, v):
      implementation = None if cfg.attention in ("auto", "blockwise") else cfg.attention
      return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                          implementation=implementation)

    def blockwise(q, k, v):
      return blockwise_attention.causal_attention(q, k, v, cfg.attention_block_len)

    if not is_causal or mask is not None or cfg.attention in ("xla", "cudnn"):
      out_BxLxHxK = library(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK)
    elif cfg.attention == "blockwise":
      out_BxLxHxK = blockwise(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK)
    else:  # "auto", decided when lowering: an AOT compile for a TPU on a CPU host gets the TPU's
      out_BxLxHxK = jax.lax.platform_dependent(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK,
                                               cpu=blockwise, default=library)
    out_std = 0.02 / (2 * cfg.num_layers) ** 0.5  # GPT-2: residual projections scaled by depth
    out_BxLxD = dense(cfg, cfg.d_model, ("heads", "head_dim", "embed"), "out",
                      std=out_std)(out_BxLxHxK)
    return out_BxLxD, cache


class Mlp(nn.Module):
  """GELU MLP (GPT-2) or SwiGLU (Llama: silu(x W_gate) * (x W_up), then W_down)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    h_BxLxF = dense(cfg, cfg.d_ff, ("embed", "mlp"), "up")(x_BxLxD)
    if cfg.mlp == "swiglu":
      h_BxLxF = nn.silu(dense(cfg, cfg.d_ff, ("embed", "mlp"), "gate")(x_BxLxD)) * h_BxLxF
    else:
      h_BxLxF = nn.gelu(h_BxLxF)
    out_std = 0.02 / (2 * cfg.num_layers) ** 0.5
    return dense(cfg, cfg.d_model, ("mlp", "embed"), "down", std=out_std)(h_BxLxF)


def constrain(x_BxLxD: jax.Array) -> jax.Array:
  """Pins activations to batch-sharded, width-replicated layout between blocks."""
  return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def stack_layers(block_cls, cfg: TransformerConfig, num_broadcast_args: int):
  """Wraps a block in remat and, with `scan_layers`, in one `nn.scan` over a leading layer axis.

  The block's call is `(x, cache, *broadcast_args) -> (x, cache)`: x is the scan carry, the cache
  (or None) is scanned along its leading layer axis, the rest are shared by every layer. Scanning
  compiles one block instead of N, which keeps compile time flat in depth.
  """
  if cfg.remat != "none":
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat],
                         prevent_cse=not cfg.scan_layers)
  if not cfg.scan_layers:
    return block_cls
  return nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                 in_axes=(0,) + (nn.broadcast,) * num_broadcast_args, length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
