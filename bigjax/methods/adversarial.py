"""Adversarial examples (FGSM, PGD): adversarial training, and robust accuracy for any image
classifier.

    --config.adversarial.attack=pgd --config.adversarial.epsilon=0.1   adversarial training
    --config.adversarial.epsilon=0.1                     standard training, robust evaluation

A perturbation stays within an L-infinity ball of radius `epsilon` around the clean image and
inside the valid pixel range [0, 1]. The attack maximises the task's own loss with the model in
eval mode (no dropout). FGSM takes one step of size epsilon along the sign of the input gradient
(Goodfellow et al., 2015); PGD starts from a uniform random point of the ball and takes `steps`
signed steps of `step_size`, projecting back onto the ball and the range after each (Madry et al.,
2018). Training replaces each row of a batch by its adversarial version with probability `mix`
(drawn per row, so microbatches and per-example DP gradients see the same rule); no gradient flows
through the attack: by Danskin's theorem the gradient of the maximised loss is the loss's gradient
at the maximiser.

Eval reports the task's metrics on clean images and robust_accuracy: accuracy under PGD-10 at the
configured epsilon with step size 2.5 * epsilon / 10 (Madry et al.) from a fixed random start.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigjax import metrics
from bigjax.config_checks import ConfigError
from bigjax.tasks.base import Report, TaskWrapper

ATTACKS = ("fgsm", "pgd")
EVAL_STEPS = 10  # robust accuracy is measured under PGD-10
EVAL_ATTACK_SEED = 0  # eval's random starts are the same at every evaluation
PIXEL_RANGE = (0.0, 1.0)  # every image dataset in bigjax.data.arrays scales pixels into [0, 1]


def perturb(loss_of_image, image, rng, epsilon: float, steps: int, step_size: float,
            random_start: bool):
  """Signed-gradient ascent on `loss_of_image` (images -> summed loss) within the epsilon ball
  and the pixel range. FGSM: steps=1, step_size=epsilon, random_start=False."""
  low = jnp.maximum(image - epsilon, PIXEL_RANGE[0])
  high = jnp.minimum(image + epsilon, PIXEL_RANGE[1])
  x = image
  if random_start:
    x = jnp.clip(image + jax.random.uniform(rng, image.shape, minval=-epsilon, maxval=epsilon),
                 low, high)
  ascend = jax.grad(loss_of_image)

  def step(_, x):
    return jnp.clip(x + step_size * jnp.sign(ascend(x)), low, high)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, step, x))


def attack_settings(adv: ml_collections.ConfigDict, attack: str) -> dict:
  if attack == "fgsm":
    return dict(epsilon=adv.epsilon, steps=1, step_size=adv.epsilon, random_start=False)
  return dict(epsilon=adv.epsilon, steps=adv.steps, step_size=adv.step_size, random_start=True)


class AdversarialTask(TaskWrapper):
  """Adversarial training (attack set) and robust evaluation of an image classifier."""

  def __init__(self, inner, adv: ml_collections.ConfigDict):
    super().__init__(inner)
    self.adv = adv
    self.eval_attack = dict(epsilon=adv.epsilon, steps=EVAL_STEPS,
                            step_size=2.5 * adv.epsilon / EVAL_STEPS, random_start=True)

  @property
  def metric_names(self):
    return (*self.inner.metric_names, "robust_accuracy")

  def transform_loss(self, loss):
    if not self.adv.attack:
      return loss
    settings = attack_settings(self.adv, self.adv.attack)

    def adversarial_loss(params, batch, rng, train: bool):
      if not train:
        return loss(params, batch, rng, train)
      start_key, mix_key, rng = jax.random.split(rng, 3)
      clean = batch["image"]
      loss_of_image = lambda x: loss(params, {**batch, "image": x}, rng, False).total
      adversarial = perturb(loss_of_image, clean, start_key, **settings)
      replaced_B = jax.random.bernoulli(mix_key, self.adv.mix, clean.shape[:1])
      image = jnp.where(replaced_B.reshape(-1, *([1] * (clean.ndim - 1))), adversarial, clean)
      return loss(params, {**batch, "image": image}, rng, train)

    return adversarial_loss

  def eval_sums(self, params, batch):
    rng = jax.random.key(EVAL_ATTACK_SEED)
    loss_of_image = lambda x: self.inner.loss(params, {**batch, "image": x}, rng, False).total
    attacked = perturb(loss_of_image, batch["image"], rng, **self.eval_attack)
    logits_BxC = self.inner.model.apply({"params": params}, attacked)
    robust = metrics.classification_sums(logits_BxC, batch["label"], batch["weight"])
    return {"clean": self.inner.eval_sums(params, batch), "robust_confusion": robust["confusion"]}

  def eval_summary(self, sums) -> Report:
    report = self.inner.eval_summary(sums["clean"])
    confusion = sums["robust_confusion"]
    report.scalars["robust_accuracy"] = float(np.trace(confusion) / np.sum(confusion))
    return report


def check(config: ml_collections.ConfigDict) -> None:
  """Bad settings, one line each, before anything compiles."""
  adv = config.adversarial
  if adv.attack and adv.attack not in ATTACKS:
    raise ConfigError(f"adversarial.attack={adv.attack!r}; use one of {', '.join(ATTACKS)} "
                      f"('' = standard training)")
  if adv.epsilon < 0:
    raise ConfigError(f"adversarial.epsilon={adv.epsilon} must be >= 0 (an L-infinity radius "
                      f"in pixel units, [0, 1])")
  if adv.attack and adv.epsilon == 0:
    raise ConfigError(f"adversarial.attack={adv.attack!r} needs adversarial.epsilon > 0")
  if adv.attack == "pgd" and (adv.steps < 1 or adv.step_size <= 0):
    raise ConfigError(f"adversarial.steps={adv.steps}, step_size={adv.step_size}: PGD needs at "
                      f"least one step of positive size")
  if not 0 <= adv.mix <= 1:
    raise ConfigError(f"adversarial.mix={adv.mix} is a share of the batch; use 0..1")
  if adv.epsilon and config.task != "classify":
    raise ConfigError(f"adversarial.* attacks image classifiers (task=classify), not "
                      f"task={config.task}")
