"""Sharding is data: 1 device and 8 emulated devices in DP, FSDP and TP train the same model."""

import jax
import numpy as np
import pytest

from bigjax import build, sharding, train

# Llama style, so every logical axis is in play: kv_heads (GQA), an untied vocab projection.
LLAMA = {"model.positions": "rope", "model.norm": "rmsnorm", "model.mlp": "swiglu",
         "model.use_bias": False, "model.tie_embeddings": False, "model.num_kv_heads": 2,
         "steps": 3, "eval_steps": 1}
LAYOUTS = {
    "data": {"mesh.data": 8},
    "fsdp": {"mesh.data": 2, "mesh.fsdp": 4},
    "tensor": {"mesh.data": -1, "mesh.tensor": 2},
}


def run(make_config, tmp_path_factory, read_checkpoint, metrics_of, devices, **mesh):
  config = make_config(**LLAMA, **mesh)
  workdir = str(tmp_path_factory.mktemp("run"))
  final = train.train_and_evaluate(config, workdir, devices=devices)
  losses = [r["train/loss"] for r in metrics_of(workdir) if "train/loss" in r]
  return final, losses, read_checkpoint(config, workdir)[1]


@pytest.fixture(scope="module")
def one_device(make_config, tmp_path_factory, read_checkpoint, metrics_of):
  return run(make_config, tmp_path_factory, read_checkpoint, metrics_of, jax.devices()[:1])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eight_devices_train_like_one(layout, one_device, make_config, tmp_path_factory,
                                      read_checkpoint, metrics_of):
  assert len(jax.devices()) == 8
  final, losses, state = run(make_config, tmp_path_factory, read_checkpoint, metrics_of,
                             jax.devices(), **LAYOUTS[layout])
  final_1, losses_1, state_1 = one_device
  assert len(losses) == 3 and losses[-1] < losses[0]
  np.testing.assert_allclose(losses, losses_1, rtol=1e-5)
  np.testing.assert_allclose(final["eval/loss"], final_1["eval/loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state.params, state_1.params)


def layout_of(make_config, **mesh):
  """The state's shardings for `mesh` on 8 devices, without allocating or compiling."""
  run = build.build(make_config(**LLAMA, **mesh), jax.devices())
  return run.abstract, run.shardings


def shard_shape(abstract, shardings, *path):
  leaf, sh = abstract.params, shardings.params
  for key in path:
    leaf, sh = leaf[key], sh[key]
  return sh.shard_shape(leaf.shape), leaf.shape


def test_fsdp_shards_parameters_and_optimizer_state(make_config):
  abstract, shardings = layout_of(make_config, **LAYOUTS["fsdp"])
  local, full = shard_shape(abstract, shardings, "layers", "mlp", "up", "kernel")  # N x D x F
  assert full == (2, 32, 64) and local == (2, 8, 64)  # embed split over fsdp=4
  local, full = shard_shape(abstract, shardings, "embed", "embedding")  # V x D
  assert local == (256, 8)
  # Adam's moments live where their parameter lives.
  mu = abstract.opt_state[1][0].mu  # clip, then adamw's scale_by_adam state
  assert mu["layers"]["mlp"]["up"]["kernel"].sharding.shard_shape((2, 32, 64)) == (2, 8, 64)
  per_device = sum(np.prod(s.shard_shape(a.shape)) for a, s in
                   zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params)))
  total = sum(np.prod(a.shape) for a in jax.tree.leaves(abstract.params))
  assert per_device < 0.3 * total  # norms stay replicated, so not quite a quarter


def test_tensor_parallel_splits_heads_mlp_and_vocab(make_config):
  abstract, shardings = layout_of(make_config, **LAYOUTS["tensor"])
  assert shard_shape(abstract, shardings, "layers", "attn", "query", "kernel") == (
      (2, 32, 2, 8), (2, 32, 4, 8))  # N x D x H x K: heads split over tensor=2
  assert shard_shape(abstract, shardings, "layers", "attn", "key", "kernel")[0] == (2, 32, 1, 8)
  assert shard_shape(abstract, shardings, "layers", "mlp", "down", "kernel")[0] == (2, 32, 32)
  assert shard_shape(abstract, shardings, "unembed", "kernel")[0] == (32, 128)
  # Pure data parallelism replicates everything.
  abstract, shardings = layout_of(make_config, **LAYOUTS["data"])
  for a, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params)):
    assert s.shard_shape(a.shape) == a.shape


def test_global_batch_splits_rows_over_data_and_fsdp():
  m = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  rows = np.arange(8 * 3).reshape(8, 3)
  batch = sharding.global_batch({"inputs": rows}, m)["inputs"]
  assert batch.shape == (8, 3)
  assert {s.data.shape for s in batch.addressable_shards} == {(2, 3)}  # 4 row groups, 2 copies
  np.testing.assert_array_equal(np.asarray(batch), rows)
