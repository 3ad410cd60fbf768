"""The GAN: two optimizers, each stepping only its own parameters in its own phase; a killed run
resumes exactly; training raises the digits classifier's score of the samples."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import build, train
from bigjax.config_checks import ConfigError
from bigjax.step import make_train_step
from configs import digits_gan, digits_mlp

K = 2  # discriminator updates per step


def tiny(**overrides):
  c = digits_gan.get_config()
  c.steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 4, 32, 1, 0, 0
  c.model.channels = (8, 16)
  c.gan.discriminator_steps = K
  c.compilation_cache_dir = ""
  c.tracking.tensorboard = c.tracking.progress = False
  c.update_from_flattened_dict(overrides)
  c.lock()
  return c


def adam_states(opt_state) -> dict[str, optax.ScaleByAdamState]:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return {group: next(x for x in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(x))
          for group, state in opt_state.items()}


def test_each_optimizer_steps_only_its_own_parameters():
  run = build.build(tiny(), jax.devices()[:1])
  state = jax.jit(run.init_fn)(0)
  batch = next(iter(run.task.train_data(run.config.batch_size, seed=0)))
  # Each group's optimizer holds moments for its own parameters only.
  for group, adam in adam_states(state.opt_state).items():
    other = ({"discriminator", "generator"} - {group}).pop()
    assert adam.mu[other] == optax.MaskedNode() and adam.nu[other] == optax.MaskedNode()
    assert jax.tree.structure(adam.mu[group]) == jax.tree.structure(state.params[group])
  # One group's update leaves the other group's parameters and optimizer state as they were.
  grads = jax.tree.map(jnp.ones_like, state.params["discriminator"])
  updates, opt_state = run.tx.update_group("discriminator", grads, state.opt_state, state.params)
  assert jax.tree.structure(updates) == jax.tree.structure(state.params["discriminator"])
  jax.tree.map(np.testing.assert_array_equal, opt_state["generator"], state.opt_state["generator"])
  # A whole step: K discriminator updates, then one generator update; both groups moved.
  after, metrics = jax.jit(make_train_step(run.task, run.tx, run.lr_schedule, run.config))(
      state, batch)
  assert {g: int(a.count) for g, a in adam_states(after.opt_state).items()} == {
      "discriminator": K, "generator": 1}
  for group in ("discriminator", "generator"):
    moved = optax.global_norm(jax.tree.map(jnp.subtract, after.params[group],
                                           state.params[group]))
    assert float(moved) > 0, group
  assert float(metrics["train/loss"]) == pytest.approx(
      float(metrics["train/discriminator/loss"] + metrics["train/generator/loss"]))


def test_gan_resumes_exactly(tmp_path, killed_and_resumed):
  (straight_step, straight), (resumed_step, resumed) = killed_and_resumed(
      tiny(checkpoint_every=2), str(tmp_path))
  assert straight_step == resumed_step == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)  # both optimizers, the noise


def classifier_score(run, params) -> dict:
  eval_sums = jax.jit(run.task.eval_sums)
  sums = None
  for batch in run.task.eval_data(run.config.batch_size, 0):
    batch_sums = eval_sums(params, batch)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  return run.task.eval_summary(jax.device_get(sums)).scalars


def test_training_raises_the_classifier_score_of_the_samples(tmp_path):
  classifier = digits_mlp.get_config()
  classifier.update_from_flattened_dict({
      "steps": 300, "batch_size": 32, "model.hidden": (128,), "optim.lr": 3e-3, "eval_every": 0,
      "checkpoint_every": 0, "compilation_cache_dir": "", "tracking.tensorboard": False,
      "tracking.progress": False})
  train.train_and_evaluate(classifier, str(tmp_path / "classifier"), devices=jax.devices()[:1])
  # The shipped model and batch: with the narrow model of the other tests the discriminator wins.
  config = tiny(steps=300, log_every=100, batch_size=128, **{
      "model.channels": (32, 64), "gan.classifier": str(tmp_path / "classifier")})
  run = build.build(config, jax.devices()[:1])
  untrained = classifier_score(run, jax.jit(run.init_fn)(0).params)
  final = train.train_and_evaluate(config, str(tmp_path / "gan"), devices=jax.devices()[:1])
  print(f"untrained {untrained}, after {config.steps} steps {final}")
  # Untrained samples are all alike (score about 1: one effective class); trained ones spread
  # over at least half a class more, and the classifier recognises some of them.
  assert final["eval/classifier_score"] > untrained["classifier_score"] + 0.5
  assert final["eval/classes"] > untrained["classes"]


@pytest.mark.parametrize("overrides, message", [
    ({"gan.discriminator_steps": 0}, r"discriminator_steps=0 must be at least 1"),
    ({"gan.discriminator_steps": 3}, r"batch_size=32 must divide into"),
    ({"gan.classifier": "/nonexistent"}, r"does not exist"),
])
def test_bad_gan_settings_fail_with_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message):
    build.make_task(tiny(**overrides))
