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
from bigjax.models import blockwise_attention, precision

POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_exact", "swiglu")  # gelu: tanh approximation (GPT-2); gelu_exact: erf (BERT)
ROPE_SCALINGS = ("", "llama3")
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
  rope_scaling: str = ""  # "" or "llama3" (Llama 3.1's long-context frequency scaling)
  rope_factor: float = 8.0  # llama3: how much longer the context is than in pretraining
  rope_low_freq_factor: float = 1.0  # llama3: wavelengths above original_max_len / this are scaled
  rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original_max_len / this are kept
  rope_original_max_len: int = 8192  # llama3: the pretraining context
  norm: str = "layernorm"
  norm_eps: float = 0.0  # 0: 1e-5 for LayerNorm, 1e-6 for RMSNorm
  post_norm: bool = False  # encoders: normalise after each residual add, no final norm (BERT)
  embed_norm: bool = False  # encoders: LayerNorm over the summed embeddings (BERT)
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
    if m.vocab_size and m.vocab_size < vocab_size:
      raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the {vocab_size} ids the "
                        f"tokenizer (and the task's special tokens) use; raise it or set 0")
    fields = dict(
        vocab_size=m.vocab_size or vocab_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads or m.num_heads,
        d_model=m.d_model,
        d_ff=m.d_ff,
        max_len=m.max_len,
        positions=m.positions,
        rope_theta=m.rope_theta,
        rope_scaling=m.rope_scaling,
        rope_factor=m.rope_factor,
        rope_low_freq_factor=m.rope_low_freq_factor,
        rope_high_freq_factor=m.rope_high_freq_factor,
        rope_original_max_len=m.rope_original_max_len,
        norm=m.norm,
        norm_eps=m.norm_eps,
        post_norm=m.post_norm,
        embed_norm=m.embed_norm,
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
               "remat": ("none", *REMAT_POLICIES), "rope_scaling": ROPE_SCALINGS}
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
    if self.causal and (self.post_norm or self.embed_norm):
      raise ConfigError("model.post_norm and model.embed_norm are options of BERT encoders; "
                        "decoders are pre-norm: set both False")
    if self.rope_scaling and not (0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
      raise ConfigError(f"model.rope_low_freq_factor={self.rope_low_freq_factor} must be positive "
                        f"and below model.rope_high_freq_factor={self.rope_high_freq_factor}")
    return self

  @property
  def exact_gelu(self) -> bool:
    return self.mlp == "gelu_exact"

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
  out_dtype: Any = None  # None: the compute dtype; float32 for logits

  @nn.compact
  def __call__(self, x):
    n_in = len(self.axes) - len(self.features)
    kernel = self.param("kernel", normal_init(self.std, self.axes),
                        x.shape[-n_in:] + self.features, jnp.float32)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    kernel = jnp.asarray(kernel, self.cfg.dtype)
    y = precision.dot_general(jnp.asarray(x, self.cfg.dtype), kernel, (contract, ((), ())))
    if self.cfg.use_bias:
      y = y + self.param("bias", _zeros(self.axes[n_in:]), self.features, jnp.float32)
    return y.astype(self.out_dtype or self.cfg.dtype)


def logits(cfg: TransformerConfig, embed: nn.Embed, x_BxLxD) -> jax.Array:
  """The tied output projection x @ E^T in the compute dtype, as float32 logits (the loss's).

  In float32, `embed.attend` itself: the call qwix's LoRA intercepts to adapt a tied head."""
  if jnp.dtype(cfg.dtype) == jnp.float32:
    return embed.attend(jnp.asarray(x_BxLxD, jnp.float32))
  table_VxD = jnp.asarray(embed.embedding, cfg.dtype)
  return precision.dot_general(jnp.asarray(x_BxLxD, cfg.dtype), table_VxD.T,
                               (((x_BxLxD.ndim - 1,), (0,)), ((), ())))


def dense(cfg: TransformerConfig, features, axes, name: str, std: float = 0.02,
          out_dtype=None) -> Dense:
  """A Dense with GPT-2 init (normal 0.02) and named kernel axes (inputs..., outputs...)."""
  features = features if isinstance(features, tuple) else (features,)
  return Dense(features, axes, cfg, std, out_dtype, name=name)


def norm(cfg: TransformerConfig, name: str) -> nn.Module:
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps or 1e-6, dtype=cfg.dtype, param_dtype=jnp.float32,
                      scale_init=_ones(("act_embed",)), name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps or 1e-5, use_bias=cfg.use_bias, dtype=cfg.dtype,
                      param_dtype=jnp.float32, scale_init=_ones(("act_embed",)),
                      bias_init=_zeros(("act_embed",)), name=name)


def rope_frequencies(cfg: TransformerConfig):
  """The K/2 rotation frequencies theta^(-2i/K), with Llama 3.1's scaling when configured.

  llama3 divides the frequencies of long wavelengths (above original_max_len / low_freq_factor)
  by `factor`, keeps short ones (below original_max_len / high_freq_factor) and blends in between,
  so a model pretrained on original_max_len tokens reads longer contexts.
  """
  half = cfg.head_dim // 2
  freq_half = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if cfg.rope_scaling != "llama3":
    return freq_half
  wavelength_half = 2 * jnp.pi / freq_half
  blend_half = ((cfg.rope_original_max_len / wavelength_half - cfg.rope_low_freq_factor)
                / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor))
  blended_half = (1 - blend_half) * freq_half / cfg.rope_factor + blend_half * freq_half
  long_half = wavelength_half > cfg.rope_original_max_len / cfg.rope_low_freq_factor
  short_half = wavelength_half < cfg.rope_original_max_len / cfg.rope_high_freq_factor
  return jnp.where(long_half, freq_half / cfg.rope_factor,
                   jnp.where(short_half, freq_half, blended_half))


def rope(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, freq_half: jax.Array) -> jax.Array:
  """Rotary position embedding: rotates pairs (i, i + K/2) by position x frequency i."""
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
  keys at `cache_index` (one per row, or shared) and masks the slots past each row's query.
  Full-sequence calls on packed rows pass `segment_ids_BxL`: a query sees only keys of its own
  segment (both paths honour it).
  """

  cfg: TransformerConfig
  causal: bool = True

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL=None, kv_BxSxD=None, cache: Cache | None = None,
               cache_index=None, mask_BxLxS=None, segment_ids_BxL=None):
    cfg = self.cfg
    H, G, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kv_input = x_BxLxD if kv_BxSxD is None else kv_BxSxD
    q_BxLxHxK = dense(cfg, (H, K), ("embed", "heads", "head_dim"), "query")(x_BxLxD)
    k_BxSxGxK = dense(cfg, (G, K), ("embed", "kv_heads", "head_dim"), "key")(kv_input)
    v_BxSxGxK = dense(cfg, (G, K), ("embed", "kv_heads", "head_dim"), "value")(kv_input)
    if cfg.positions == "rope" and kv_BxSxD is None:
      freq_half = rope_frequencies(cfg)
      q_BxLxHxK = rope(q_BxLxHxK, positions_BxL, freq_half)
      k_BxSxGxK = rope(k_BxSxGxK, positions_BxL, freq_half)

    is_causal = self.causal and kv_BxSxD is None
    mask = None if mask_BxLxS is None else mask_BxLxS[:, None]
    if cache is not None:
      # Write this call's keys into the cache at each row's own index (a scalar, or one per row
      # when rows hold sequences of different lengths); a query at position p sees slots <= p.
      index_B = jnp.broadcast_to(cache_index, x_BxLxD.shape[:1])
      write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice_in_dim(c, new, i, axis=0))
      k_BxSxGxK = write(cache["k"], k_BxSxGxK, index_B)
      v_BxSxGxK = write(cache["v"], v_BxSxGxK, index_B)
      cache = {"k": k_BxSxGxK, "v": v_BxSxGxK}
      slot_S = jnp.arange(k_BxSxGxK.shape[1])
      query_pos_BxL = index_B[:, None] + jnp.arange(x_BxLxD.shape[1])
      mask = (slot_S <= query_pos_BxL[..., None])[:, None]
      is_causal = False

    k_BxSxGxK, v_BxSxGxK = k_BxSxGxK.astype(q_BxLxHxK.dtype), v_BxSxGxK.astype(q_BxLxHxK.dtype)

    def library(q, k, v):
      implementation = None if cfg.attention in ("auto", "blockwise") else cfg.attention
      full_mask = mask
      if segment_ids_BxL is not None:  # packed rows: a query sees its own segment only
        same_Bx1xLxL = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
        full_mask = same_Bx1xLxL if mask is None else mask & same_Bx1xLxL
      return jax.nn.dot_product_attention(q, k, v, mask=full_mask, is_causal=is_causal,
                                          implementation=implementation)

    def blockwise(q, k, v):
      return blockwise_attention.causal_attention(q, k, v, cfg.attention_block_len,
                                                  segment_ids_BxL)

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
  """GELU MLP (GPT-2, BERT) or SwiGLU (Llama: silu(x W_gate) * (x W_up), then W_down)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    h_BxLxF = dense(cfg, cfg.d_ff, ("embed", "mlp"), "up")(x_BxLxD)
    if cfg.mlp == "swiglu":
      h_BxLxF = nn.silu(dense(cfg, cfg.d_ff, ("embed", "mlp"), "gate")(x_BxLxD)) * h_BxLxF
    else:
      h_BxLxF = nn.gelu(h_BxLxF, approximate=not cfg.exact_gelu)
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
