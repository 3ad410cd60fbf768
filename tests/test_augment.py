"""Augmentation: images per example from the step's key, never at eval, labels kept; tokens
corrupted on the host with the label and the special tokens kept. (A killed augmented run resumes
exactly: tests/test_adversarial.py trains both together.)"""

import jax
import ml_collections
import numpy as np
import pytest

from bigjax import build
from bigjax.config_checks import ConfigError
from bigjax.data import augment
from bigjax.data.text_classify import ClassifyExamples
from bigjax.data.tokenizers import SpecialTokens
from configs import digits_mlp

EVERYTHING = {"augment.crop_padding": 1, "augment.rotate_degrees": 15.0,
              "augment.brightness": 0.2, "augment.contrast": 0.2}


def tiny(**overrides):
  c = digits_mlp.get_config()
  c.batch_size = 8
  c.model.hidden = (16,)
  c.update_from_flattened_dict(overrides)
  c.lock()
  return c


def digits(n: int):
  task = build.make_task(tiny())
  rows = [task.train_examples[i] for i in range(n)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_images_are_augmented_per_example_and_reproducibly():
  aug = tiny(**EVERYTHING).augment
  images = np.repeat(digits(1)["image"], 4, axis=0)  # one digit, four times
  augmented = jax.jit(lambda k, x: augment.augment_images(k, x, aug))
  first, again = augmented(jax.random.key(3), images), augmented(jax.random.key(3), images)
  np.testing.assert_array_equal(first, again)  # the same key (seed and step) draws the same
  copies = np.asarray(first).reshape(4, -1)
  assert len({row.tobytes() for row in copies}) == 4  # each copy drew its own augmentation
  assert not np.array_equal(augmented(jax.random.key(4), images), first)
  assert first.shape == images.shape and 0 <= float(first.min()) <= float(first.max()) <= 1


def test_eval_is_untouched_and_labels_are_kept():
  batch = digits(8)
  plain = build.make_task(tiny())
  mixed = build.make_task(tiny(**EVERYTHING, **{"augment.mixup_alpha": 0.4,
                                                "augment.cutmix_alpha": 1.0}))
  params = jax.jit(lambda: plain.model.init(jax.random.key(0), batch["image"])["params"])()
  rng = jax.random.key(1)
  eval_loss = lambda task: jax.jit(lambda p: task.loss(p, batch, rng, False))(params)
  jax.tree.map(np.testing.assert_array_equal, eval_loss(mixed), eval_loss(plain))
  jax.tree.map(np.testing.assert_array_equal, jax.jit(mixed.eval_sums)(params, batch),
               jax.jit(plain.eval_sums)(params, batch))
  # Training: every example still counts once in all (its blend's two labels share its weight).
  trained = jax.jit(lambda p: mixed.loss(p, batch, rng, True))(params)
  np.testing.assert_allclose(trained.weight, batch["weight"].sum(), rtol=1e-6)
  assert float(trained.total) != float(eval_loss(plain).total)


def test_tokens_are_corrupted_with_label_and_special_tokens_kept():
  special = SpecialTokens(256)
  text = np.arange(1, 41, dtype=np.int32)
  examples = ClassifyExamples([[text]], ["only"], 48, special)
  aug = ml_collections.ConfigDict({"token_delete": 0.2, "token_swap": 0.2, "token_mask": 0.2})
  corrupted = augment.corrupted(examples, aug, special)
  out = corrupted.example(0, np.random.default_rng(7))
  again = corrupted.example(0, np.random.default_rng(7))
  np.testing.assert_array_equal(out["inputs"], again["inputs"])  # grain's per-record rng
  assert out["labels"] == examples.example(0)["labels"]
  tokens = out["inputs"]
  end = int(np.flatnonzero(tokens == special.sep)[0])
  assert tokens[0] == special.cls and (tokens[end + 1:] == special.pad).all()
  body = tokens[1:end]
  kept = body[body != special.mask]
  assert 0 < len(body) < len(text)  # some deleted
  assert (body == special.mask).any() and set(kept) <= set(text)
  assert not np.array_equal(kept, np.sort(kept))  # some swapped


@pytest.mark.parametrize("overrides, message", [
    ({"task": "regress", "data.name": "diabetes", "augment.brightness": 0.1},
     "need a task with images; task=regress"),
    ({"augment.token_mask": 0.1}, "task=classify is not text_classify"),
    ({"augment.contrast": 1.5}, "must be below 1"),
])
def test_augmentation_that_does_not_fit_the_task_fails_with_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message):
    build.make_task(tiny(**overrides))


def test_image_augmentation_of_a_language_model_fails_with_one_line(make_config):
  with pytest.raises(ConfigError, match="need a task with images; task=lm"):
    build.make_task(make_config(**{"augment.crop_padding": 2}))
