"""Image reconstruction: a convolutional autoencoder, or a VAE trained on the ELBO.

Pixels in [0, 1] are treated as Bernoulli probabilities, so the reconstruction loss is the
per-pixel sigmoid cross-entropy summed over an image. The VAE adds KL(q(z|x) || N(0, I)); their
sum is the negative evidence lower bound (ELBO), in nats per image. Eval reports it over the
whole test split; the run ends with image grids of test reconstructions and (VAE) samples.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax import plots
from bigjax.config_checks import ConfigError
from bigjax.models import vision
from bigjax.tasks.base import Loss, Report
from bigjax.tasks.examples import ExamplesTask

AUTOENCODERS = ("autoencoder", "vae")
EVAL_NOISE_SEED = 0  # eval draws the same VAE codes every time, so evals compare
GRID_IMAGES = 32  # test images reconstructed, and codes sampled, for the final image grids


class ReconstructTask(ExamplesTask):
  """Autoencoder/VAE on (image, label, weight) batches; labels are carried but never read."""

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    if config.model.name not in AUTOENCODERS:
      raise ConfigError(f"model.name={config.model.name!r}: reconstruction uses one of "
                        f"{', '.join(AUTOENCODERS)}")
    super().__init__(config, process_index, process_count, kind="classes")
    image_shape = self.train_examples[0]["image"].shape
    vision.check_strided_convs(config.model.channels, image_shape)
    self.variational = config.model.name == "vae"
    # A plain autoencoder has no KL term to report.
    self.metric_names = ("loss", "reconstruction", "kl") if self.variational else ("loss",)
    self.model_cfg = vision.VisionConfig.from_config(config, image_shape, num_outputs=0)
    self.model = vision.MODELS[config.model.name](self.model_cfg)

  def _losses(self, params, image_BxHxWxC, rng):
    """(reconstruction_B, kl_B): -log p(x|z) and KL(q(z|x) || N(0, I)) per image, in nats."""
    noise_BxZ = None
    if self.variational:
      noise_BxZ = jax.random.normal(rng, (image_BxHxWxC.shape[0], self.model_cfg.latent))
    logits_BxHxWxC, mean_BxZ, log_variance_BxZ = self.model.apply(
        {"params": params}, image_BxHxWxC, noise_BxZ)
    cross_entropy = optax.sigmoid_binary_cross_entropy(logits_BxHxWxC.astype(jnp.float32),
                                                       image_BxHxWxC)
    reconstruction_B = cross_entropy.sum(axis=(1, 2, 3))
    if not self.variational:
      return reconstruction_B, jnp.zeros_like(reconstruction_B)
    mean_BxZ, log_variance_BxZ = mean_BxZ.astype(jnp.float32), log_variance_BxZ.astype(jnp.float32)
    kl_B = 0.5 * (jnp.exp(log_variance_BxZ) + mean_BxZ**2 - 1 - log_variance_BxZ).sum(-1)
    return reconstruction_B, kl_B

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"image": jax.ShapeDtypeStruct((batch_size, *self.model_cfg.input_shape), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "weight": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["image"])

  def loss(self, params, batch, rng, train: bool):
    reconstruction_B, kl_B = self._losses(params, batch["image"], rng)
    weights_B = batch["weight"]
    total = lambda x_B: (weights_B * x_B).sum()
    parts = {"reconstruction": total(reconstruction_B), "kl": total(kl_B)}
    return Loss(total=total(reconstruction_B + kl_B), weight=weights_B.sum(),
                metrics=parts if self.variational else {})

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    rng = jax.random.key(EVAL_NOISE_SEED)
    reconstruction_B, kl_B = self._losses(params, batch["image"], rng)
    weights_B = batch["weight"]
    return {"reconstruction": (weights_B * reconstruction_B).sum(),
            "kl": (weights_B * kl_B).sum(), "count": weights_B.sum()}

  def eval_summary(self, sums) -> Report:
    """Per image: the loss (the negative ELBO for a VAE), its reconstruction and KL parts."""
    n = float(sums["count"])
    reconstruction, kl = float(sums["reconstruction"]) / n, float(sums["kl"]) / n
    scores = {"loss": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}
    return Report({name: scores[name] for name in self.metric_names})

  def finish(self, params, rng) -> Report:
    """Image grids: test images (odd rows) above their reconstructions, and VAE samples."""
    originals_BxHxWxC = np.stack([self.test_examples[i]["image"] for i in range(GRID_IMAGES)])
    logits_BxHxWxC, _, _ = jax.jit(self.model.apply)({"params": params}, originals_BxHxWxC)
    reconstructions_BxHxWxC = np.asarray(jax.nn.sigmoid(logits_BxHxWxC), np.float32)
    rows = [block for r in range(0, GRID_IMAGES, 8)
            for block in (originals_BxHxWxC[r:r + 8], reconstructions_BxHxWxC[r:r + 8])]
    grids = {"reconstructions": plots.image_grid(np.concatenate(rows), columns=8)}
    if self.variational:
      z_BxZ = jax.random.normal(rng, (GRID_IMAGES, self.model_cfg.latent))
      decode = jax.jit(lambda p, z: self.model.apply({"params": p}, z,
                                                     method=vision.AutoEncoder.decode))
      samples_BxHxWxC = np.asarray(jax.nn.sigmoid(decode(params, z_BxZ)), np.float32)
      grids["samples"] = plots.image_grid(samples_BxHxWxC, columns=8)
    return Report(images=grids)
