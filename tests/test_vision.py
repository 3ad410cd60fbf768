"""Vision and tabular families through the one loop: 1 vs 8 devices, learning, eval coverage."""

import json
import os

import jax
import numpy as np
import pytest

from bigjax import train
from bigjax.config_checks import ConfigError
from bigjax.data import arrays
from configs import diabetes_mlp, digits_mlp, digits_vae

# Tiny variants of the shipped configs: (config module, overrides).
FAMILIES = {
    "mlp": (digits_mlp, {"model.hidden": (32, 16)}),
    "cnn": (digits_mlp, {"model.name": "cnn", "model.channels": (4, 8), "model.hidden": (16,)}),
    "vit": (digits_mlp, {"model.name": "vit", "model.patch_size": 4, "model.num_layers": 1,
                         "model.num_heads": 2, "model.d_model": 16, "model.d_ff": 32}),
    "regress": (diabetes_mlp, {"model.hidden": (16,)}),
    "vae": (digits_vae, {"model.channels": (4, 8)}),  # the autoencoder is this without noise
}


def tiny(module, **overrides):
  c = module.get_config()
  c.steps = 3
  c.batch_size = 16  # 360 digit test images = 22.5 batches: the last one is padded
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 0
  c.optim.warmup_steps = 1
  c.tracking.tensorboard = False
  c.tracking.progress = False
  c.update_from_flattened_dict(overrides)
  c.lock()
  return c


@pytest.mark.parametrize("family", FAMILIES)
def test_one_and_eight_devices_agree(family, tmp_path):
  module, overrides = FAMILIES[family]
  config = tiny(module, **overrides)
  one = train.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = train.train_and_evaluate(config, str(tmp_path / "eight"), devices=jax.devices())
  scores = [k for k in one if k.startswith(("eval/", "train/loss"))]
  assert any(k.startswith("eval/") for k in scores)
  for key in scores:
    assert np.isfinite(one[key]), key
    assert eight[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
  if family == "vae":
    images = set(os.listdir(tmp_path / "one" / "images"))
    assert {"reconstructions_step3.png", "samples_step3.png"} <= images


def test_mlp_learns_digits_and_saves_plots(tmp_path):
  config = tiny(digits_mlp, steps=150, batch_size=32, **{"model.hidden": (64,), "optim.lr": 3e-3})
  final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  # Ten balanced classes: chance is 0.10. This MLP measures 0.92 after its 150 steps (the full
  # digits_mlp recipe reaches 0.98); 0.85 leaves room for another platform's rounding.
  assert final["eval/accuracy"] > 0.85
  assert final["perf/examples_per_sec"] == pytest.approx(32 / final["perf/step_seconds"])
  images = os.listdir(tmp_path / "images")
  assert {"eval_confusion_matrix_step150.png", "eval_roc_step150.png"} <= set(images)


def test_early_stop_keeps_the_best_and_stays_stopped(tmp_path):
  # lr 1e-30: Adam's updates (about lr each) vanish in float32 rounding, so eval/loss never
  # improves on the first evaluation, and patience 2 stops at step 15.
  config = tiny(digits_mlp, steps=40, eval_every=5, **{
      "model.hidden": (8,), "optim.lr": 1e-30, "early_stop.metric": "eval/loss",
      "early_stop.mode": "min", "early_stop.patience": 2})
  final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  assert final["best/step"] == 5
  assert os.listdir(tmp_path / "best") == ["5"]
  assert "15" in os.listdir(tmp_path / "checkpoints")
  logged = [line for line in open(tmp_path / "metrics.jsonl") if '"train/loss"' in line]
  assert len(logged) == 15  # log_every=1: steps 1..15, none after the stop
  # The parameters never move: every eval gives the first one's loss, hence the stop.
  evals = [json.loads(line)["eval/loss"] for line in open(tmp_path / "metrics.jsonl")
           if '"eval/loss"' in line]
  assert evals == [evals[0]] * 3
  # Run again: it resumes at step 15, already out of patience, and trains no further.
  again = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  assert again["best/step"] == 5
  assert len([line for line in open(tmp_path / "metrics.jsonl") if '"train/loss"' in line]) == 15


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_counts_every_test_example_once(process_count):
  config = digits_mlp.get_config()
  test = arrays.examples(config.data, "test")
  seen, batch_counts = [], set()
  for p in range(process_count):
    batches = list(arrays.eval_batches(test, 16, p, process_count))
    batch_counts.add(len(batches))
    for batch in batches:
      assert batch["image"].shape == (16, 8, 8, 1)
      keep = batch["weight"] > 0
      seen += [img.tobytes() + bytes([lbl]) for img, lbl in zip(batch["image"][keep],
                                                               batch["label"][keep])]
  assert len(batch_counts) == 1  # every process runs the same number of eval steps
  expected = [test[i]["image"].tobytes() + bytes([test[i]["label"]]) for i in range(len(test))]
  assert sorted(seen) == sorted(expected)


def test_tfds_mnist_examples_under_mock_data():
  import tensorflow_datasets as tfds

  config = digits_mlp.get_config()
  config.data.source, config.data.name = "tfds", "mnist"
  with tfds.testing.mock_data(num_examples=20):  # never reaches the network
    test = arrays.examples(config.data, "test")
    batches = list(arrays.eval_batches(test, 8, 0, 1))
  assert len(batches) == 3 and batches[-1]["weight"].sum() == 4
  image = batches[0]["image"]
  assert image.shape == (8, 28, 28, 1) and image.dtype == np.float32
  assert 0 <= image.min() and image.max() <= 1


def test_digits_split_is_fixed_and_disjoint():
  config = digits_mlp.get_config()
  train_images = {x["image"].tobytes() for x in arrays.examples(config.data, "train")}
  test = arrays.examples(config.data, "test")
  assert len(test) == 360 and len(train_images) > 1400
  overlap = sum(test[i]["image"].tobytes() in train_images for i in range(len(test)))
  assert overlap <= 2  # load_digits holds a couple of exact duplicate images


@pytest.mark.parametrize("overrides, message", [
    ({"model.name": "vae"}, "not a classifier"),
    ({"data.name": "diabetes"}, "has no classes"),
    ({"data.name": "cifar"}, "not an array dataset"),
    ({"model.name": "vit", "model.patch_size": 3}, "does not divide"),
])
def test_bad_configs_fail_with_one_line(overrides, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(tiny(digits_mlp, **overrides), str(tmp_path))
