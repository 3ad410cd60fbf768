"""Data augmentation: images on device with dm-pix, token sequences on the host.

Images (`augment_images`, traced into the train step): every example draws its own key from the
step's key, so examples are augmented independently and a resumed run draws exactly what an
uninterrupted one would; evaluation never augments. In order: a random crop back to size after
zero-padding `crop_padding` pixels on each side; a horizontal flip (only for images whose mirror
keeps its label: not digits); a rotation by a uniform angle within +-`rotate_degrees`; a
brightness shift within +-`brightness`; a contrast factor within 1 +- `contrast`; pixels clipped
back to [0, 1]. Mixup and cutmix (`mix_images`) blend each example with the next one of its
batch: the loss is then the two labels' losses weighted by the blend (methods/augment.py).

Tokens (`corrupted`, in the grain pipeline of text classification): each text token of a training
example is deleted with probability `token_delete` (the rest close up), swapped with its
neighbour with probability `token_swap`, or replaced by [MASK] with probability `token_mask`.
The generator is grain's per-record one, so a resumed run corrupts the same way.
"""

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

IMAGE_KEYS = ("crop_padding", "flip", "rotate_degrees", "brightness", "contrast",
              "mixup_alpha", "cutmix_alpha")
TOKEN_KEYS = ("token_delete", "token_swap", "token_mask")


def augments_images(aug: ml_collections.ConfigDict) -> bool:
  return any(aug[key] for key in IMAGE_KEYS)


def corrupts_tokens(aug: ml_collections.ConfigDict) -> bool:
  return any(aug[key] for key in TOKEN_KEYS)


def augment_image(key, image_HxWxC, aug: ml_collections.ConfigDict):
  """One example's geometric and photometric augmentation (see the module docstring)."""
  crop_key, flip_key, rotate_key, brightness_key, contrast_key = jax.random.split(key, 5)
  if aug.crop_padding:
    p = aug.crop_padding
    padded = jnp.pad(image_HxWxC, ((p, p), (p, p), (0, 0)))
    image_HxWxC = pix.random_crop(crop_key, padded, image_HxWxC.shape)
  if aug.flip:
    image_HxWxC = pix.random_flip_left_right(flip_key, image_HxWxC)
  if aug.rotate_degrees:
    angle = jnp.deg2rad(jax.random.uniform(rotate_key, (), minval=-aug.rotate_degrees,
                                           maxval=aug.rotate_degrees))
    image_HxWxC = pix.rotate(image_HxWxC, angle, mode="constant", cval=0.0)
  if aug.brightness:
    image_HxWxC = pix.random_brightness(brightness_key, image_HxWxC, aug.brightness)
  if aug.contrast:
    image_HxWxC = pix.random_contrast(contrast_key, image_HxWxC, 1 - aug.contrast,
                                      1 + aug.contrast)
  return jnp.clip(image_HxWxC, 0.0, 1.0)


def augment_images(key, images_BxHxWxC, aug: ml_collections.ConfigDict):
  """`augment_image` on every example with its own key (dm-pix on a whole batch would draw once
  for the batch)."""
  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(lambda k, x: augment_image(k, x, aug))(keys, images_BxHxWxC)


def _cutmix_mask(key, lam, height: int, width: int):
  """HxWx1 mask, 1 inside a box of about (1 - lam) of the image at a uniform centre; the box's
  true share after clipping to the image is returned too."""
  cy_key, cx_key = jax.random.split(key)
  side = jnp.sqrt(1.0 - lam)
  cy = jax.random.uniform(cy_key) * height
  cx = jax.random.uniform(cx_key) * width
  rows, cols = jnp.arange(height)[:, None] + 0.5, jnp.arange(width)[None, :] + 0.5
  inside = ((jnp.abs(rows - cy) <= side * height / 2) & (jnp.abs(cols - cx) <= side * width / 2))
  return inside[..., None].astype(jnp.float32), inside.mean()


def mix_images(key, images_BxHxWxC, aug: ml_collections.ConfigDict):
  """(mixed images, share_B of each example's own image): each example is blended with the next
  one of its batch (the last with the first), by mixup or, where chosen, cutmix. With both on,
  each example picks one of the two with even odds."""
  B, H, W, _ = images_BxHxWxC.shape
  partner_BxHxWxC = jnp.roll(images_BxHxWxC, -1, axis=0)
  mixup_key, cutmix_key, box_key, choice_key = jax.random.split(key, 4)
  mixed, share_B = images_BxHxWxC, jnp.ones((B,), jnp.float32)
  if aug.mixup_alpha:
    lam_B = jax.random.beta(mixup_key, aug.mixup_alpha, aug.mixup_alpha, (B,))
    lam = lam_B[:, None, None, None]
    mixed, share_B = lam * images_BxHxWxC + (1 - lam) * partner_BxHxWxC, lam_B
  if aug.cutmix_alpha:
    lam_B = jax.random.beta(cutmix_key, aug.cutmix_alpha, aug.cutmix_alpha, (B,))
    masks, box_share_B = jax.vmap(lambda k, l: _cutmix_mask(k, l, H, W))(
        jax.random.split(box_key, B), lam_B)
    cut = images_BxHxWxC * (1 - masks) + partner_BxHxWxC * masks
    use_cut_B = (jax.random.bernoulli(choice_key, 0.5, (B,)) if aug.mixup_alpha
                 else jnp.ones((B,), bool))
    mixed = jnp.where(use_cut_B[:, None, None, None], cut, mixed)
    share_B = jnp.where(use_cut_B, 1 - box_share_B, share_B)
  return mixed, share_B


class CorruptedExamples:
  """Text-classification examples whose text tokens are deleted, swapped or masked at random;
  [CLS], [SEP] and padding are kept, and so is the label."""

  def __init__(self, examples, aug: ml_collections.ConfigDict, special):
    self.examples, self.aug, self.special = examples, aug, special

  def __len__(self) -> int:
    return len(self.examples)

  def __getattr__(self, name):  # class_names, ...: the examples' own
    return getattr(self.examples, name)

  def example(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    example = self.examples.example(i, rng)
    tokens_L = example["inputs"]
    s = self.special
    text = tokens_L[(tokens_L != s.pad) & (tokens_L != s.cls) & (tokens_L != s.sep)]
    text = text[rng.random(len(text)) >= self.aug.token_delete]
    for j in np.flatnonzero(rng.random(max(len(text) - 1, 0)) < self.aug.token_swap):
      text[j], text[j + 1] = text[j + 1], text[j]
    text = np.where(rng.random(len(text)) < self.aug.token_mask, s.mask, text)
    out_L = np.full_like(tokens_L, s.pad)
    out_L[:len(text) + 2] = np.concatenate([[s.cls], text, [s.sep]])
    return {**example, "inputs": out_L}


def corrupted(examples, aug: ml_collections.ConfigDict, special):
  """`examples` with token corruption when any augment.token_* rate is set, else as they are."""
  return CorruptedExamples(examples, aug, special) if corrupts_tokens(aug) else examples
