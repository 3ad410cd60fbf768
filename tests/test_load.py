"""bigjax.load: a trained run back in Python, its parameters equal to the checkpoint's, for a
workdir, its best checkpoint or one step, and a one-line error for anything else."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigjax
from bigjax import train
from bigjax.config_checks import ConfigError


@pytest.fixture(scope="module")
def trained(make_config, tmp_path_factory, read_checkpoint):
  config = make_config(steps=6, checkpoint_every=3, eval_every=3,
                       **{"early_stop.metric": "eval/loss", "early_stop.mode": "min"})
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  return config, workdir, read_checkpoint(config, workdir)[1]


def test_load_gives_the_checkpoint_params_and_a_working_model(trained):
  config, workdir, state = trained
  run = bigjax.load(workdir)
  assert run.step == 6 and run.config.model.d_model == config.model.d_model
  jax.tree.map(np.testing.assert_array_equal, run.params, state.params)
  tokens_BxL = jnp.asarray(run.tokenizer.encode("def f(x):")[None])
  logits_BxLxV, _ = run.model.apply({"params": run.params}, tokens_BxL)
  assert logits_BxLxV.shape == (1, tokens_BxL.shape[1], run.tokenizer.vocab_size)
  scores = run.task.eval_summary(jax.device_get(jax.jit(run.task.eval_sums)(
      run.params, next(iter(run.task.eval_data(4, 1)))))).scalars
  assert np.isfinite(scores["loss"])


def test_load_best_or_one_step(trained):
  _, workdir, _ = trained
  best = bigjax.load(workdir, best=True)
  assert best.directory == os.path.join(workdir, "best") and best.step in (3, 6)
  step3 = bigjax.load(os.path.join(workdir, "checkpoints", "3"))
  assert step3.step == 3
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, step3.params,
                                              bigjax.load(workdir).params)))


def test_load_lays_parameters_out_on_the_devices_asked_for(trained):
  _, workdir, _ = trained
  run = bigjax.load(workdir, devices=jax.devices(), mesh={"data": 1, "fsdp": 8, "tensor": 1})
  kernel = run.params["layers"]["mlp"]["up"]["kernel"]  # N x D x F, D split over fsdp
  assert kernel.sharding.shard_shape(kernel.shape)[1] == kernel.shape[1] // 8


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_load_of_something_else_is_a_one_line_error(tmp_path, where):
  path = tmp_path / "run"
  if where == "empty":
    path.mkdir()
  with pytest.raises(ConfigError, match="workdir, its checkpoints directory or a step"):
    bigjax.load(str(path))
