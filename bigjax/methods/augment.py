"""Image augmentation as a change of the training loss (bigjax/data/augment.py does the pixels).

    --config.augment.crop_padding=1 --config.augment.rotate_degrees=10 \
        [--config.augment.mixup_alpha=0.2]

The training loss of every phase sees augmented images; evaluation and the attack of adversarial
training (eval mode) see them as they are. The augmentation key comes from the loss's own key,
which the step derives from the seed and the step number (and the microbatch), so a resumed run
draws the same augmentations. With mixup or cutmix, an example blended with its partner is scored
against both labels, each weighted by its share of the blend: the loss's weight is unchanged.
"""

import jax

from bigjax.config_checks import ConfigError
from bigjax.data import augment
from bigjax.tasks.base import TaskWrapper


class AugmentedTask(TaskWrapper):

  def __init__(self, inner, aug):
    super().__init__(inner)
    self.aug = aug
    self.mixes = bool(aug.mixup_alpha or aug.cutmix_alpha)

  def transform_loss(self, loss):
    def augmented_loss(params, batch, rng, train: bool):
      if not train:
        return loss(params, batch, rng, train)
      augment_key, mix_key, rng = jax.random.split(rng, 3)
      batch = {**batch, "image": augment.augment_images(augment_key, batch["image"], self.aug)}
      if not self.mixes:
        return loss(params, batch, rng, train)
      image, own_share_B = augment.mix_images(mix_key, batch["image"], self.aug)
      own = {**batch, "image": image, "weight": batch["weight"] * own_share_B}
      partner = {**own, "label": jax.numpy.roll(batch["label"], -1, axis=0),
                 "weight": batch["weight"] * (1 - own_share_B)}
      # The same key: both terms see the same dropout, as one forward pass would.
      return jax.tree.map(jax.numpy.add, loss(params, own, rng, train),
                          loss(params, partner, rng, train))

    return augmented_loss


def check(config, task) -> None:
  """Augmentation needs what it changes: images (or, for tokens, text-classification examples)."""
  aug = config.augment
  for key in ("crop_padding", "rotate_degrees", "brightness", "contrast", "mixup_alpha",
              "cutmix_alpha", *augment.TOKEN_KEYS):
    if aug[key] < 0:
      raise ConfigError(f"augment.{key}={aug[key]} must be >= 0")
  for key in ("contrast", *augment.TOKEN_KEYS):
    if aug[key] >= 1:
      raise ConfigError(f"augment.{key}={aug[key]} must be below 1")
  spec = task.batch_spec(1)
  if augment.augments_images(aug) and not ("image" in spec and len(spec["image"].shape) == 4):
    raise ConfigError(f"augment.* image settings need a task with images; task={config.task} "
                      f"has none (its batches hold {', '.join(spec)})")
  if (aug.mixup_alpha or aug.cutmix_alpha) and "label" not in spec:
    raise ConfigError(f"augment.mixup_alpha/cutmix_alpha blend labels; task={config.task} has "
                      f"no labels")
  if augment.corrupts_tokens(aug) and config.task != "text_classify":
    raise ConfigError(f"augment.token_* corrupts text-classification inputs (their labels "
                      f"survive it); task={config.task} is not text_classify")
