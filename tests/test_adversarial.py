"""Adversarial examples: perturbations stay in the epsilon ball and the pixel range, stronger
attacks find higher losses, adversarial training buys robust accuracy, and it resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigjax
from bigjax import build, train
from bigjax.config_checks import ConfigError
from bigjax.methods import adversarial
from configs import digits_mlp

EPSILON = 0.2


def tiny(**overrides):
  c = digits_mlp.get_config()
  c.steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 150, 32, 50, 0, 0
  c.model.hidden = (32,)
  c.optim.lr, c.optim.warmup_steps = 3e-3, 10
  c.compilation_cache_dir = ""
  c.tracking.tensorboard = c.tracking.progress = False
  c.update_from_flattened_dict({"adversarial.epsilon": EPSILON, **overrides})
  c.lock()
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Standard and PGD-trained digit classifiers, both evaluated under PGD-10 at EPSILON."""
  runs = {}
  for name, overrides in (("standard", {}), ("adversarial", {"adversarial.attack": "pgd",
                                                             "adversarial.steps": 5,
                                                             "adversarial.step_size": 0.1})):
    workdir = str(tmp_path_factory.mktemp(name))
    runs[name] = (train.train_and_evaluate(tiny(**overrides), workdir, devices=jax.devices()[:1]),
                  workdir)
  return runs


def test_adversarial_training_raises_robust_accuracy(trained):
  standard, adv = trained["standard"][0], trained["adversarial"][0]
  print(f"clean/robust accuracy: standard {standard['eval/accuracy']:.3f}/"
        f"{standard['eval/robust_accuracy']:.3f}, adversarial {adv['eval/accuracy']:.3f}/"
        f"{adv['eval/robust_accuracy']:.3f}")
  assert adv["eval/robust_accuracy"] > standard["eval/robust_accuracy"] + 0.1
  assert standard["eval/robust_accuracy"] < standard["eval/accuracy"]  # the attack bites


def test_stronger_attacks_find_higher_losses_within_the_ball(trained):
  run = bigjax.load(trained["standard"][1], devices=jax.devices()[:1])
  task = run.task.inner  # the classifier inside AdversarialTask
  batch = next(task.eval_data(64, 1))
  loss_of_image = lambda x: task.loss(run.params, {**batch, "image": x}, jax.random.key(0),
                                      False).total
  clean = batch["image"]
  attacks = {"fgsm": adversarial.attack_settings(run.config.adversarial, "fgsm"),
             "pgd": dict(epsilon=EPSILON, steps=10, step_size=2.5 * EPSILON / 10,
                         random_start=True)}
  losses = {"clean": float(loss_of_image(clean))}
  for name, settings in attacks.items():
    image = jax.jit(lambda x: adversarial.perturb(loss_of_image, x, jax.random.key(1),
                                                  **settings))(clean)
    assert float(jnp.abs(image - clean).max()) <= EPSILON + 1e-6
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    losses[name] = float(loss_of_image(image))
  assert losses["pgd"] >= losses["fgsm"] >= losses["clean"], losses


def test_adversarial_and_augmented_training_resumes_exactly(tmp_path, killed_and_resumed):
  config = tiny(steps=4, log_every=1, checkpoint_every=2, **{
      "adversarial.attack": "fgsm", "augment.crop_padding": 1, "augment.mixup_alpha": 0.2})
  (straight_step, straight), (resumed_step, resumed) = killed_and_resumed(config, str(tmp_path))
  assert straight_step == resumed_step == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


@pytest.mark.parametrize("overrides, message", [
    ({"adversarial.epsilon": -0.1}, r"epsilon=-0.1 must be >= 0"),
    ({"adversarial.attack": "cw"}, r"attack='cw'; use one of fgsm, pgd"),
    ({"adversarial.attack": "pgd", "adversarial.epsilon": 0.0}, "needs adversarial.epsilon > 0"),
    ({"adversarial.mix": 1.5}, r"mix=1.5 is a share"),
])
def test_bad_adversarial_settings_fail_with_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message):
    build.make_task(tiny(**overrides))
