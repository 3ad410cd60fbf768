"""DP-SGD: clipping bounds each example, no noise and no clipping is plain SGD, epsilon is
dp-accounting's, a private run resumes exactly and spends what it was told to."""

import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigjax
from bigjax import build
from bigjax.config_checks import ConfigError
from bigjax.methods import privacy
from bigjax.step import make_train_step
from configs import digits_mlp

SGD = {"optim.name": "sgd", "optim.lr": 0.5, "optim.momentum": 0.0, "optim.weight_decay": 0.0,
       "optim.clip_norm": 0.0, "optim.warmup_steps": 0, "optim.schedule": "constant"}


def tiny(**overrides):
  c = digits_mlp.get_config()
  c.steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 4, 32, 1, 0, 0
  c.model.hidden = (16,)
  c.compilation_cache_dir = ""
  c.tracking.tensorboard = c.tracking.progress = False
  c.update_from_flattened_dict(overrides)
  c.lock()
  return c


def examples(task, rows: int, real: int):
  """`real` training examples, then weight-0 padding up to `rows`."""
  picked = [task.train_examples[i] for i in range(real)]
  batch = {k: np.stack([e[k] for e in picked]) for k in picked[0]}
  return {k: np.concatenate([v, np.zeros((rows - real, *v.shape[1:]), v.dtype)])
          for k, v in batch.items()}


def test_every_clipped_per_example_gradient_is_within_the_clip_norm():
  task = build.make_task(tiny())
  params = nn.meta.unbox(jax.jit(task.init)(jax.random.key(0), examples(task, 1, 1))["params"])
  loss = lambda p, b, r: task.loss(p, b, r, True)
  clip = 0.5

  @jax.jit
  def one_example(example):
    batch = jax.tree.map(lambda x: x[None], example)
    grads, _, norms = privacy.noisy_clipped_sum(loss, params, batch, jax.random.key(1), clip, 0.0)
    return optax.global_norm(grads), norms[0]

  batch = examples(task, 16, 16)
  clipped, raw = zip(*[one_example(jax.tree.map(lambda x: x[i], batch)) for i in range(16)])
  assert max(raw) > clip  # clipping had something to do
  np.testing.assert_array_less(np.array(clipped), clip * (1 + 1e-5))  # float32 rounding
  # An example whose gradient was already short is left as it was.
  short = [c for c, r in zip(clipped, raw) if r <= clip]
  np.testing.assert_allclose(short, [r for r in raw if r <= clip], rtol=1e-5)


def test_no_noise_and_no_clipping_is_plain_sgd():
  """sigma=0, C=inf: the private step is the plain step, on a batch of exactly the expected size."""
  private = build.build(tiny(batch_size=64, **SGD, **{
      "privacy.clip_norm": float("inf"), "privacy.expected_batch_size": 16}), jax.devices()[:1])
  plain = build.build(tiny(batch_size=64, **SGD), jax.devices()[:1])
  batch = examples(plain.task, 64, 16)
  state = jax.jit(plain.init_fn)(0)
  after = {}
  for name, run in (("private", private), ("plain", plain)):
    step = jax.jit(make_train_step(run.task, run.tx, run.lr_schedule, run.config))
    after[name], _ = step(state, batch)
  assert float(optax.global_norm(jax.tree.map(jnp.subtract, after["plain"].params,
                                              state.params))) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               after["private"].params, after["plain"].params)


def test_epsilon_is_dp_accountings_rdp_value():
  """Abadi et al.'s MNIST setting: sigma 1.1, q = 256/60000, 60 epochs (14,062 steps)."""
  steps, q, sigma, delta = 14_062, 256 / 60_000, 1.1, 1e-5
  spent = privacy.epsilons(privacy.poisson_step(q, sigma), [0, 1, 100, steps], delta)
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(privacy.poisson_step(q, sigma), steps)
  assert spent[-1] == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
  assert round(spent[-1], 2) == 2.60
  assert spent[0] == 0 and np.all(np.diff(spent) > 0)  # every step spends some


@pytest.fixture(scope="module")
def private_run(killed_and_resumed, tmp_path_factory, metrics_of):
  config = tiny(checkpoint_every=2, **{"privacy.clip_norm": 1.0, "privacy.target_epsilon": 8.0,
                                       "privacy.expected_batch_size": 8})
  workdir = str(tmp_path_factory.mktemp("private"))
  straight, resumed = killed_and_resumed(config, workdir)
  return config, straight, resumed, metrics_of(workdir), workdir


def test_private_run_resumes_exactly(private_run):
  _, (straight_step, straight), (resumed_step, resumed), _, _ = private_run
  assert straight_step == resumed_step == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)  # Poisson draws and noise too


def test_private_run_spends_its_target_epsilon(private_run):
  config, _, _, rows, _ = private_run
  logged = [r["train/epsilon"] for r in rows if r["step"] == config.steps and "train/epsilon" in r]
  # Calibration stops within dp-accounting's tolerance below the target, never above it.
  assert 7.9 < logged[-1] <= 8.0
  drawn = [r["train/drawn_batch"] for r in rows if "train/drawn_batch" in r]
  assert len(set(drawn)) > 1  # Poisson sampling: the batch size varies


def test_a_private_run_loads_for_use(private_run):
  """bigjax.load builds a one-row layout, which no Poisson draw fits: DP is training-only."""
  _, (_, state), _, _, workdir = private_run
  loaded = bigjax.load(workdir, devices=jax.devices()[:1])
  jax.tree.map(np.testing.assert_array_equal, loaded.params, state.params)


@pytest.mark.parametrize("overrides, message", [
    ({"privacy.noise_multiplier": 1.0}, "need privacy.clip_norm > 0"),
    ({"privacy.clip_norm": 1.0, "privacy.target_epsilon": -1.0}, "target_epsilon=-1.0 must be"),
    ({"privacy.clip_norm": 1.0, "privacy.noise_multiplier": 1.0}, "expected_batch_size=0"),
    ({"privacy.clip_norm": 1.0, "privacy.noise_multiplier": 1.0,
      "privacy.expected_batch_size": 30}, r"use batch_size >= \d+"),
])
def test_bad_privacy_settings_fail_with_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message):
    build.make_task(tiny(**overrides))
