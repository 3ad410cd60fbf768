"""A generative adversarial network (DCGAN-style) on digits or MNIST: two models, two optimizers.

The parameters have two groups, `generator` and `discriminator`, and a train step has two phases
(tasks.base.Phase): `gan.discriminator_steps` = k discriminator updates, update j on rows j, j+k,
... of the real images, then one generator update; each group has its own optimizer
(config.optim with its own learning rate, gan.generator_lr / gan.discriminator_lr), so neither
phase touches the other's parameters or moments. Losses are the non-saturating ones of Goodfellow
et al. (2014): the discriminator minimises -log D(x) - log(1 - D(G(z))), the generator -log D(G(z)).

Every batch carries its noise codes (`noise`, drawn on the host by grain from the seed and the
position): a resumed run draws the same ones, and evaluation scores the same samples every time.

Eval reports both losses on the test split (and how often the discriminator is right on real and
on fake images) and, with `gan.classifier` (the workdir of a digits classifier, e.g. one trained by
configs/digits_mlp.py), a score of the samples by that classifier: `confident`, the share it
classifies with probability >= 0.9; `classes`, how many of the 10 classes those confident samples
cover; `classifier_score`, exp(E_x KL(p(y|x) || p(y))), the Inception score with the digits
classifier (1 for samples all alike or unrecognisable, 10 for confident, evenly spread classes).
The run ends with a grid of samples in WORKDIR/images, TensorBoard and W&B.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigjax import plots
from bigjax.config_checks import ConfigError
from bigjax.models import vision
from bigjax.tasks.base import Loss, Phase, Report
from bigjax.tasks.examples import ExamplesTask

CONFIDENT = 0.9  # a sample is confidently classified at this top probability
EVAL_NOISE_SEED = 0  # evaluation's noise codes
GRID_SAMPLES = 64  # the final image grid


class GANTask(ExamplesTask):

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    gan = config.gan
    if gan.discriminator_steps < 1:
      raise ConfigError(f"gan.discriminator_steps={gan.discriminator_steps} must be at least 1")
    if config.batch_size % gan.discriminator_steps:
      raise ConfigError(f"batch_size={config.batch_size} must divide into "
                        f"gan.discriminator_steps={gan.discriminator_steps} discriminator batches")
    if min(gan.generator_lr, gan.discriminator_lr) <= 0:
      raise ConfigError(f"gan.generator_lr={gan.generator_lr}, discriminator_lr="
                        f"{gan.discriminator_lr} must be positive")
    super().__init__(config, process_index, process_count, kind="classes")
    image_shape = self.train_examples[0]["image"].shape
    vision.check_strided_convs(config.model.channels, image_shape)
    self.model_cfg = vision.VisionConfig.from_config(config, image_shape, num_outputs=0)
    self.model = vision.GAN(self.model_cfg)
    self.classifier = self._load_classifier(gan.classifier, image_shape) if gan.classifier else None
    scores = ("confident", "classes", "classifier_score") if self.classifier else ()
    self.metric_names = ("discriminator_loss", "generator_loss", "real_accuracy",
                         "fake_accuracy", *scores)

  @staticmethod
  def _load_classifier(path: str, image_shape):
    """(model, parameters on the host) of the classifier trained in `path`."""
    from bigjax.load import load  # imported here: loading builds a run, which imports the tasks

    loaded = load(path, devices=jax.devices()[:1])
    if loaded.config.task != "classify":
      raise ConfigError(f"gan.classifier={path!r} trained task={loaded.config.task}; point it "
                        f"at an image classifier's workdir (configs/digits_mlp.py)")
    if tuple(loaded.task.model_cfg.input_shape) != tuple(image_shape):
      raise ConfigError(f"gan.classifier={path!r} reads {loaded.task.model_cfg.input_shape} "
                        f"images, not {tuple(image_shape)}")
    return loaded.model, jax.device_get(loaded.params)

  @property
  def phases(self):
    gan = self.config.gan
    return (Phase("discriminator", self.discriminator_loss, group="discriminator",
                  repeat=gan.discriminator_steps, optim={"lr": gan.discriminator_lr}),
            Phase("generator", self.generator_loss, group="generator",
                  optim={"lr": gan.generator_lr}))

  # The losses, summed over the batch.

  def _generate(self, params, noise_BxZ):
    return self.model.apply({"params": params}, noise_BxZ, method=vision.GAN.generate)

  def _discriminate(self, params, image_BxHxWxC):
    return self.model.apply({"params": params}, image_BxHxWxC, method=vision.GAN.discriminate)

  def discriminator_loss(self, params, batch, rng, train: bool) -> Loss:
    del rng, train  # no dropout
    real_B = self._discriminate(params, batch["image"])
    fake_B = self._discriminate(params, self._generate(params, batch["noise"]))
    loss_B = jax.nn.softplus(-real_B) + jax.nn.softplus(fake_B)  # -log D(x) - log(1 - D(G(z)))
    w_B = batch["weight"]
    return Loss(total=(w_B * loss_B).sum(), weight=w_B.sum(),
                metrics={"real_accuracy": (w_B * (real_B > 0)).sum(),
                         "fake_accuracy": (w_B * (fake_B < 0)).sum()})

  def generator_loss(self, params, batch, rng, train: bool) -> Loss:
    del rng, train
    fake_B = self._discriminate(params, self._generate(params, batch["noise"]))
    w_B = batch["weight"]
    return Loss(total=(w_B * jax.nn.softplus(-fake_B)).sum(), weight=w_B.sum())  # -log D(G(z))

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"image": jax.ShapeDtypeStruct((batch_size, *self.model_cfg.input_shape), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "weight": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
            "noise": jax.ShapeDtypeStruct((batch_size, self.model_cfg.latent), jnp.float32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["noise"], batch["image"])

  def loss(self, params, batch, rng, train: bool) -> Loss:
    """Both players' losses, added (what train/loss reports); the step trains each on its own."""
    d, g = self.discriminator_loss(params, batch, rng, train), self.generator_loss(
        params, batch, rng, train)
    return Loss(total=d.total + g.total, weight=d.weight)

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    d = self.discriminator_loss(params, batch, None, False)
    g = self.generator_loss(params, batch, None, False)
    sums = {"discriminator_loss": d.total, "generator_loss": g.total, "count": d.weight,
            **d.metrics}
    if self.classifier:
      sums |= self._classifier_sums(self._generate(params, batch["noise"]), batch["weight"])
    return sums

  def _classifier_sums(self, samples_BxHxWxC, w_B) -> dict[str, jax.Array]:
    """Sums that the score needs: confident samples per class, sum_x sum_y p log p, sum_x p(y|x)."""
    model, classifier_params = self.classifier
    log_p_BxC = jax.nn.log_softmax(model.apply({"params": classifier_params}, samples_BxHxWxC)
                                   .astype(jnp.float32))
    p_BxC = jnp.exp(log_p_BxC)
    confident_B = (p_BxC.max(-1) >= CONFIDENT) * w_B
    return {"confident_per_class": jax.nn.one_hot(p_BxC.argmax(-1), p_BxC.shape[-1]).T
            @ confident_B,
            "negative_entropy": (w_B * (p_BxC * log_p_BxC).sum(-1)).sum(),
            "marginal": w_B @ p_BxC}

  def eval_summary(self, sums) -> Report:
    n = float(sums["count"])
    scalars = {name: float(sums[name]) / n for name in
               ("discriminator_loss", "generator_loss", "real_accuracy", "fake_accuracy")}
    if self.classifier:
      per_class = np.asarray(sums["confident_per_class"], np.float64)
      marginal = np.asarray(sums["marginal"], np.float64)
      # E_x KL(p(y|x) || p(y)) = (sum_x sum_y p log p - sum_y m_y log(m_y / n)) / n, m = sum_x p.
      cross = float(np.sum(marginal * np.log(np.maximum(marginal, 1e-30) / n)))
      scalars |= {"confident": float(per_class.sum()) / n,
                  "classes": int((per_class > 0).sum()),
                  "classifier_score": float(np.exp((float(sums["negative_entropy"]) - cross) / n))}
    return Report(scalars)

  def train_data(self, local_batch: int, seed: int):
    """The real images, shuffled, each batch with its noise codes (grain's per-batch rng)."""
    latent = self.model_cfg.latent
    batches = super().train_data(local_batch, seed)
    return batches.random_map(
        lambda b, rng: {**b, "noise": rng.standard_normal((local_batch, latent), np.float32)},
        seed=seed)

  def eval_data(self, local_batch: int, num_batches: int):
    for b, batch in enumerate(super().eval_data(local_batch, num_batches)):
      rng = np.random.default_rng([EVAL_NOISE_SEED, self.process_index, b])
      yield {**batch, "noise": rng.standard_normal((local_batch, self.model_cfg.latent),
                                                   np.float32)}

  def flops_per_example(self, params) -> float:
    """3 x the forward FLOPs of what one example costs: G(z), and D on a real and a fake image."""
    z = jax.ShapeDtypeStruct((1, self.model_cfg.latent), jnp.float32)
    x = jax.ShapeDtypeStruct((1, *self.model_cfg.input_shape), jnp.float32)
    forward = jax.jit(lambda p, z, x: (self._discriminate(p, self._generate(p, z)),
                                       self._discriminate(p, x))).lower(params, z, x)
    return 3 * float(forward.cost_analysis()["flops"])

  def finish(self, params, rng) -> Report:
    noise_BxZ = jax.random.normal(rng, (GRID_SAMPLES, self.model_cfg.latent))
    samples = np.asarray(jax.jit(self._generate)(params, noise_BxZ), np.float32)
    return Report(images={"samples": plots.image_grid(samples, columns=8)})
