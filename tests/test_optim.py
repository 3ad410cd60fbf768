"""Schedules, weight-decay mask, every optimizer, and gradient accumulation through the step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import build, optim
from bigjax.step import TrainState, make_train_step
from configs import base


def optim_config(**overrides):
  c = base.get_config().optim
  c.update(overrides)
  return c


def lrs(schedule, steps):
  return np.array([float(schedule(s)) for s in range(steps + 1)])


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_schedule_warms_up_linearly_then_decays_to_its_floor(name):
  cfg = optim_config(lr=2.0, warmup_steps=10, min_lr_ratio=0.1, schedule=name)
  lr = lrs(optim.schedule(cfg, steps=110), 110)
  np.testing.assert_allclose(lr[:11], np.linspace(0.0, 2.0, 11), rtol=1e-6)
  floor = {"cosine": 0.2, "linear": 0.2, "constant": 2.0}[name]
  np.testing.assert_allclose(lr[110], floor, rtol=1e-6)
  if name == "cosine":  # half way through the decay: the mean of peak and floor
    np.testing.assert_allclose(lr[60], 1.1, rtol=1e-6)
  if name == "linear":
    np.testing.assert_allclose(lr[10:], np.linspace(2.0, 0.2, 101), rtol=1e-5)
  assert np.all(np.diff(lr[10:]) <= 1e-7)  # never rises after the warmup


def test_a_warmup_longer_than_the_run_is_cut_to_it_and_said(caplog):
  cfg = optim_config(lr=2.0, warmup_steps=100, schedule="cosine")
  with caplog.at_level("WARNING", logger="bigjax"):
    lr = lrs(optim.schedule(cfg, steps=4), 4)
  np.testing.assert_allclose(lr, [0.0, 0.5, 1.0, 1.5, 2.0], rtol=1e-6)  # 0 to lr over 4 steps
  assert "optim.warmup_steps=100 is not below steps=4" in caplog.text


def test_decay_mask_selects_kernels_only():
  params = {"embed": {"embedding": 0}, "layers": {"attn": {"query": {"kernel": 0, "bias": 0}},
                                                  "attn_norm": {"scale": 0}},
            "unembed": {"kernel": 0}}
  mask = optim.decay_mask(params)
  assert mask == {"embed": {"embedding": False},
                  "layers": {"attn": {"query": {"kernel": True, "bias": False}},
                             "attn_norm": {"scale": False}},
                  "unembed": {"kernel": True}}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_minimises_a_quadratic(name):
  target = {"w": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]])}, "b": {"bias": jnp.array([2.0, -1.0])}}
  loss = lambda p: sum(jnp.sum((x - t) ** 2) for x, t in zip(jax.tree.leaves(p), jax.tree.leaves(target)))
  tx, _ = optim.make_optimizer(
      optim_config(name=name, lr=0.05, warmup_steps=5, schedule="constant", weight_decay=0.0), 200)
  params = jax.tree.map(jnp.zeros_like, target)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(200):
    params, state = step(params, state)
  assert float(loss(params)) < 0.05 * float(loss(jax.tree.map(jnp.zeros_like, target)))


# Tasks whose microbatches hold different numbers of real tokens: seq2seq targets of different
# lengths (padding), MLM with next-sentence prediction (a token term and an example term).
ACCUMULATE = {
    "lm": {},
    "seq2seq": {"task": "seq2seq", "data.source": "synthetic", "data.name": "reverse",
                "seq_len": 12},
    "mlm_nsp": {"task": "mlm", "mlm.nsp": True, "model.token_types": 2},
}


@pytest.mark.parametrize("task_name", list(ACCUMULATE))
def test_gradient_accumulation_matches_one_full_batch(make_config, task_name):
  """Two microbatches of 4 rows give the update of one batch of 8 (SGD: the update is the grad)."""
  config = make_config(**{"optim.name": "sgd", "optim.momentum": 0.0, "optim.clip_norm": 0.0,
                          "optim.weight_decay": 0.0, "optim.warmup_steps": 0, "optim.lr": 1.0},
                       **ACCUMULATE[task_name])
  task = build.make_task(config)
  tx, lr = optim.make_optimizer(config.optim, config.steps)
  batch = next(iter(task.train_data(config.batch_size, seed=0)))
  params = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0), batch)["params"])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  results = {}
  for accum in (1, 2):
    config.unlock()
    config.optim.grad_accum_steps = accum
    results[accum] = jax.jit(make_train_step(task, tx, lr, config))(state, batch)
  (full, full_metrics), (accumulated, acc_metrics) = results[1], results[2]
  for name in full_metrics:
    np.testing.assert_allclose(acc_metrics[name], full_metrics[name], rtol=2e-5, err_msg=name)
  # Plain SGD at lr 1 (no warmup, momentum, clipping or decay) moves by minus the gradient, which
  # is not zero: the updates compared below are real ones.
  np.testing.assert_allclose(full_metrics["train/update_norm"], full_metrics["train/grad_norm"],
                             rtol=1e-5)
  assert float(full_metrics["train/grad_norm"]) > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               accumulated.params, full.params)
  assert int(accumulated.step) == 1
