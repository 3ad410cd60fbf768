"""Small image and tabular models: MLP, CNN and ViT classifiers; a convolutional autoencoder/VAE;
a DCGAN-style generator and discriminator.

Tensor names end in their shape, with these letters:
  B batch, H height, W width, C channels, F features of a flat vector, O outputs (classes or
  regression targets), Z latent code width; in the ViT, L patches (its tokens) and D token width.

Every parameter carries logical axis names: hidden widths alternate between `mlp` and `embed`
(as a Transformer's MLP does), so a config's `sharding_rules` split them over `tensor` and
`fsdp`; input pixels, kernel windows and the few outputs stay unnamed (replicated).
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigjax.config_checks import ConfigError
from bigjax.models import bert, layers, precision
from bigjax.models.layers import TransformerConfig


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Model hyperparameters, built once from the config; modules never read the global config."""

  name: str
  input_shape: tuple[int, ...]  # one example: (H, W, C) for images, (F,) for feature vectors
  num_outputs: int  # classes, regression targets, or 0 for the autoencoders
  hidden: tuple[int, ...] = (512, 256, 128)
  channels: tuple[int, ...] = (32, 64)
  patch_size: int = 2
  latent: int = 16
  dtype: Any = jnp.float32
  transformer: TransformerConfig | None = None  # the ViT's encoder blocks

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, input_shape, num_outputs: int):
    m = config.model
    transformer = None
    if m.name == "vit":
      num_patches = math.prod(s // m.patch_size for s in input_shape[:2])
      # Positions are the ViT's own learned embedding, added once before the blocks.
      transformer = TransformerConfig.from_config(config, vocab_size=0, max_len=num_patches,
                                                  positions="learned", causal=False)
    return cls(name=m.name, input_shape=tuple(input_shape), num_outputs=num_outputs,
               hidden=tuple(m.hidden), channels=tuple(m.channels), patch_size=m.patch_size,
               latent=m.latent, dtype=jnp.dtype(config.dtype), transformer=transformer)


def check_strided_convs(channels, image_shape) -> None:
  """One stride-2 conv per entry of `channels` halves the image each time: its sides must allow
  that (the autoencoders' and the GAN's encoders and decoders mirror each other)."""
  shrink = 2 ** len(channels)
  if any(s % shrink for s in image_shape[:2]):
    raise ConfigError(f"{len(channels)} stride-2 convs (model.channels) need image sides "
                      f"divisible by {shrink}, not {image_shape[:2]}; use fewer")


def _hidden_axis(i: int) -> str:
  """Logical name of the i-th hidden width: mlp, embed, mlp, ... (a kernel never names twice)."""
  return "mlp" if i % 2 == 0 else "embed"


def _dense(cfg: VisionConfig, features: int, axes: tuple, name: str) -> nn.Dense:
  # He init keeps ReLU activations at unit scale through depth.
  return nn.Dense(features, dtype=cfg.dtype, param_dtype=jnp.float32, name=name,
                  dot_general=precision.dot_general,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]))


def _conv(cfg: VisionConfig, features: int, axes: tuple, name: str, kernel: int = 3,
          stride: int = 1, transpose: bool = False) -> nn.Module:
  conv = nn.ConvTranspose if transpose else nn.Conv
  return conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
              dtype=cfg.dtype, param_dtype=jnp.float32, name=name,
              kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(),
                                                       (None, None) + axes),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]))


class MLP(nn.Module):
  """Flatten, then Dense+ReLU per hidden width, then a linear head: x -> outputs_BxO."""

  cfg: VisionConfig

  @nn.compact
  def __call__(self, x, train: bool = False):
    h_BxF = x.reshape(x.shape[0], -1)
    in_axis = "embed"
    for i, width in enumerate(self.cfg.hidden):
      h_BxF = nn.relu(_dense(self.cfg, width, (in_axis, _hidden_axis(i)), f"hidden_{i}")(h_BxF))
      in_axis = _hidden_axis(i)
    return _dense(self.cfg, self.cfg.num_outputs, (in_axis, None), "head")(h_BxF)


class CNN(nn.Module):
  """Conv3x3+ReLU+2x2 max-pool per entry of `channels`, then the MLP head on the flat features."""

  cfg: VisionConfig

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    in_axis = None  # a few input channels: not worth splitting
    for i, channels in enumerate(self.cfg.channels):
      x_BxHxWxC = nn.relu(_conv(self.cfg, channels, (in_axis, _hidden_axis(i)), f"conv_{i}")(
          x_BxHxWxC))
      x_BxHxWxC = nn.max_pool(x_BxHxWxC, (2, 2), strides=(2, 2))
      in_axis = _hidden_axis(i)
    return MLP(self.cfg, name="mlp")(x_BxHxWxC)


class ViT(nn.Module):
  """Vision Transformer: PxP patches -> tokens + learned positions -> encoder -> mean -> head.

  Mean-pooling the tokens (instead of a class token) works as well on small images and keeps
  every token a patch.
  """

  cfg: VisionConfig

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    tcfg, P = self.cfg.transformer, self.cfg.patch_size
    # A PxP convolution with stride P embeds each patch on its own.
    x_BxhxwxD = _conv(self.cfg, tcfg.d_model, (None, "embed"), "patch_embed", kernel=P,
                      stride=P)(x_BxHxWxC)
    x_BxLxD = x_BxhxwxD.reshape(x_BxhxwxD.shape[0], -1, tcfg.d_model)
    pos_LxD = self.param("pos_embed", layers.normal_init(0.02, (None, "embed")),
                         x_BxLxD.shape[1:], jnp.float32)
    x_BxLxD = layers.constrain(x_BxLxD + pos_LxD.astype(tcfg.dtype))
    x_BxLxD = nn.Dropout(tcfg.dropout, deterministic=not train)(x_BxLxD)
    # BERT's encoder block: every patch attends to every patch (no positions or mask needed).
    block = layers.stack_layers(bert.EncoderBlock, tcfg, num_broadcast_args=2)
    if tcfg.scan_layers:
      x_BxLxD, _ = block(tcfg, deterministic=not train, name="layers")(x_BxLxD, None, None, None)
    else:
      for i in range(tcfg.num_layers):
        x_BxLxD, _ = block(tcfg, deterministic=not train, name=f"layer_{i}")(
            x_BxLxD, None, None, None)
    x_BxD = layers.norm(tcfg, "final_norm")(x_BxLxD).mean(axis=1)
    return _dense(self.cfg, self.cfg.num_outputs, ("embed", None), "head")(x_BxD)


class AutoEncoder(nn.Module):
  """Convolutional autoencoder; with `variational`, a VAE with a Gaussian code.

  Encoder: stride-2 convs (each halves H and W) then a dense layer to the code. Decoder: the
  mirror image, ending in per-pixel Bernoulli logits. The VAE encoder outputs a mean and a log
  variance; a code is drawn with the reparameterization z = mean + std * noise, so gradients flow
  through the draw.
  """

  cfg: VisionConfig
  variational: bool = False

  def setup(self):
    cfg = self.cfg
    self.convs = [_conv(cfg, c, (None, _hidden_axis(i)), f"enc_conv_{i}", stride=2)
                  for i, c in enumerate(cfg.channels)]
    code = 2 * cfg.latent if self.variational else cfg.latent
    last_axis = _hidden_axis(len(cfg.channels) - 1)
    self.to_code = _dense(cfg, code, (last_axis, None), "to_code")
    H, W, _ = cfg.input_shape
    shrink = 2 ** len(cfg.channels)
    self.small_shape = (H // shrink, W // shrink, cfg.channels[-1])
    self.from_code = _dense(cfg, math.prod(self.small_shape), (None, last_axis), "from_code")
    reversed_channels = list(reversed(cfg.channels[:-1])) + [cfg.input_shape[-1]]
    self.deconvs = [_conv(cfg, c, (None, None), f"dec_conv_{i}", stride=2, transpose=True)
                    for i, c in enumerate(reversed_channels)]

  def encode(self, x_BxHxWxC) -> tuple[jax.Array, jax.Array]:
    """(mean_BxZ, log_variance_BxZ); the log variance is 0 (unused) for a plain autoencoder."""
    for conv in self.convs:
      x_BxHxWxC = nn.relu(conv(x_BxHxWxC))
    code_BxZ = self.to_code(x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1))
    if not self.variational:
      return code_BxZ, jnp.zeros_like(code_BxZ)
    return jnp.split(code_BxZ, 2, axis=-1)

  def decode(self, z_BxZ) -> jax.Array:
    """Per-pixel Bernoulli logits, BxHxWxC."""
    x_BxHxWxC = nn.relu(self.from_code(z_BxZ)).reshape(z_BxZ.shape[0], *self.small_shape)
    for i, deconv in enumerate(self.deconvs):
      x_BxHxWxC = deconv(x_BxHxWxC)
      if i < len(self.deconvs) - 1:
        x_BxHxWxC = nn.relu(x_BxHxWxC)
    return x_BxHxWxC

  def __call__(self, x_BxHxWxC, noise_BxZ=None):
    """(logits_BxHxWxC, mean_BxZ, log_variance_BxZ); `noise_BxZ` draws a VAE code, else z = mean."""
    mean_BxZ, log_variance_BxZ = self.encode(x_BxHxWxC)
    z_BxZ = mean_BxZ
    if self.variational and noise_BxZ is not None:
      z_BxZ = mean_BxZ + jnp.exp(0.5 * log_variance_BxZ) * noise_BxZ
    return self.decode(z_BxZ), mean_BxZ, log_variance_BxZ


class Generator(nn.Module):
  """DCGAN's generator without batch norm: code z_BxZ -> dense -> the smallest feature map ->
  stride-2 transposed convs (each doubles H and W) -> per-pixel logits (sigmoid: pixels)."""

  cfg: VisionConfig

  @nn.compact
  def __call__(self, z_BxZ):
    cfg = self.cfg
    H, W, C = cfg.input_shape
    shrink = 2 ** len(cfg.channels)
    small = (H // shrink, W // shrink, cfg.channels[-1])
    last_axis = _hidden_axis(len(cfg.channels) - 1)
    x = nn.relu(_dense(cfg, math.prod(small), (None, last_axis), "from_code")(z_BxZ))
    x_BxHxWxC = x.reshape(z_BxZ.shape[0], *small)
    widths = list(reversed(cfg.channels[:-1])) + [C]
    for i, width in enumerate(widths):
      x_BxHxWxC = _conv(cfg, width, (None, None), f"deconv_{i}", stride=2, transpose=True)(
          x_BxHxWxC)
      if i < len(widths) - 1:
        x_BxHxWxC = nn.relu(x_BxHxWxC)
    return x_BxHxWxC


class Discriminator(nn.Module):
  """Stride-2 convs with leaky ReLU (DCGAN's), then a dense layer to one real-vs-fake logit."""

  cfg: VisionConfig

  @nn.compact
  def __call__(self, x_BxHxWxC):
    for i, width in enumerate(self.cfg.channels):
      x_BxHxWxC = nn.leaky_relu(_conv(self.cfg, width, (None, _hidden_axis(i)), f"conv_{i}",
                                      stride=2)(x_BxHxWxC), 0.2)
    x_BxF = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    last_axis = _hidden_axis(len(self.cfg.channels) - 1)
    return _dense(self.cfg, 1, (last_axis, None), "logit")(x_BxF)[:, 0]


class GAN(nn.Module):
  """A generator and a discriminator: the parameters' two top-level groups, one optimizer each."""

  cfg: VisionConfig

  def setup(self):
    self.generator = Generator(self.cfg)
    self.discriminator = Discriminator(self.cfg)

  def generate(self, z_BxZ):
    """Images in [0, 1]."""
    return nn.sigmoid(self.generator(z_BxZ).astype(jnp.float32))

  def discriminate(self, x_BxHxWxC):
    """Logits of "real"."""
    return self.discriminator(x_BxHxWxC).astype(jnp.float32)

  def __call__(self, z_BxZ, x_BxHxWxC):
    return self.generate(z_BxZ), self.discriminate(x_BxHxWxC)


# The one table from `config.model.name` to a module; tasks say which of these they accept.
MODELS = {
    "mlp": MLP,
    "cnn": CNN,
    "vit": ViT,
    "autoencoder": functools.partial(AutoEncoder, variational=False),
    "vae": functools.partial(AutoEncoder, variational=True),
}
