"""FedAvg: one local step over equal clients is centralized SGD; client splits are fixed and
non-IID ones skewed; non-IID training is slower; a private federated run resumes exactly."""

import jax
import numpy as np
import optax
import pytest

from bigjax import build, train
from bigjax.config_checks import ConfigError
from bigjax.methods import federated
from bigjax.step import make_train_step
from configs import digits_mlp

SGD = {"optim.name": "sgd", "optim.lr": 1.0, "optim.momentum": 0.0, "optim.weight_decay": 0.0,
       "optim.clip_norm": 0.0, "optim.warmup_steps": 0, "optim.schedule": "constant"}


def tiny(**overrides):
  c = digits_mlp.get_config()
  c.steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 4, 32, 1, 0, 0
  c.model.hidden = (16,)
  c.compilation_cache_dir = ""
  c.tracking.tensorboard = c.tracking.progress = False
  c.update_from_flattened_dict({**SGD, **overrides})
  c.lock()
  return c


def test_one_local_step_over_equal_clients_is_centralized_sgd():
  """3 IID clients hold 479 of the 1437 training digits each; every client in the round, one
  local step of its whole data: the average change is -client_lr x the full-batch gradient."""
  fed = build.build(tiny(batch_size=479, **{"federated.clients": 3, "federated.client_lr": 0.3}),
                    jax.devices()[:1])
  central = build.build(tiny(batch_size=1437, **{"optim.lr": 0.3}), jax.devices()[:1])
  assert [len(c) for c in fed.task.clients] == [479] * 3
  round_batch = next(iter(fed.task.train_data(479, seed=0)))
  assert round_batch["weight"].shape == (3, 479) and round_batch["weight"].all()
  whole = {k: v.reshape(1437, *v.shape[2:]) for k, v in round_batch.items()}
  state = jax.jit(central.init_fn)(0)
  after = {}
  for name, run, batch in (("fed", fed, round_batch), ("central", central, whole)):
    step = jax.jit(make_train_step(run.task, run.tx, run.lr_schedule, run.config))
    after[name] = step(state, batch)[0].params
  moved = optax.global_norm(jax.tree.map(np.subtract, after["central"], state.params))
  assert float(moved) > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), after["fed"],
               after["central"])


def test_client_splits_are_fixed_partitions_and_dirichlet_ones_skewed():
  labels = np.repeat(np.arange(10), 100)
  skew = {}
  for split, alpha in (("iid", 0.0), ("dirichlet", 0.1)):
    clients = federated.split_clients(labels, 10, split, alpha)
    again = federated.split_clients(labels, 10, split, alpha)
    assert all(np.array_equal(a, b) for a, b in zip(clients, again))
    assert np.array_equal(np.sort(np.concatenate(clients)), np.arange(1000))  # each once
    # The share of each client's examples that its most common label holds.
    skew[split] = np.mean([np.bincount(labels[c]).max() / len(c) for c in clients if len(c)])
  assert skew["iid"] < 0.25 < 0.6 < skew["dirichlet"]  # IID: about 1/10 each


def test_non_iid_clients_train_slower_than_iid_ones(tmp_path):
  accuracy = {}
  for split in ("iid", "dirichlet"):
    config = tiny(steps=15, batch_size=16, **{
        "federated.clients": 10, "federated.clients_per_round": 5, "federated.split": split,
        "federated.alpha": 0.1, "federated.client_lr": 0.1})
    final = train.train_and_evaluate(config, str(tmp_path / split), devices=jax.devices()[:1])
    accuracy[split] = final["eval/accuracy"]
  # Clients holding a class or two each pull the model apart (client drift).
  assert accuracy["iid"] > accuracy["dirichlet"] + 0.1, accuracy


def test_private_federated_run_resumes_exactly(tmp_path, killed_and_resumed):
  config = tiny(checkpoint_every=2, **{
      "federated.clients": 6, "federated.clients_per_round": 3, "federated.split": "dirichlet",
      "privacy.clip_norm": 1.0, "privacy.noise_multiplier": 0.5})
  (straight_step, straight), (resumed_step, resumed) = killed_and_resumed(config, str(tmp_path))
  assert straight_step == resumed_step == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)  # client draws and noise too


@pytest.mark.parametrize("overrides, message", [
    ({"federated.clients": 4, "federated.clients_per_round": 5}, "more than the 4 clients"),
    ({"federated.clients": 4, "federated.split": "dirichlet", "federated.alpha": 0.0},
     r"alpha=0.0: a Dirichlet concentration must be > 0"),
    ({"federated.clients": 4, "federated.split": "dirichlet", "federated.alpha": -1.0},
     r"alpha=-1.0"),
])
def test_bad_federated_settings_fail_with_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message):
    build.make_task(tiny(**overrides))
