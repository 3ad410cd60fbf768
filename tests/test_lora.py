"""LoRA and QLoRA: only the adapters train, and they are a small share of a real model; the base
is bitwise untouched and has no optimizer state; the first step is the base model's; merging
changes nothing; adapting a code model to prose recovers most of a full fine-tune's gain."""

import os
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from bigjax import adapt, build, train
from bigjax.adapt import lora, measure
from bigjax.config_checks import ConfigError
from bigjax.load import load
from configs import gpt2

# qwix 0.1.8 checks for a class Flax has deprecated, on every parameter it looks at.
pytestmark = pytest.mark.filterwarnings("ignore:'VariableState' was removed")

TARGETS = ".*(attn|mlp)/.*|embed"  # every projection and the tied output projection
ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def prose_path(tmp_path_factory) -> str:
  """English prose (the start of Python's own pydoc topics) to adapt a model of code to."""
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  path = tmp_path_factory.mktemp("prose") / "prose.txt"
  path.write_text((stdlib / "pydoc_data" / "topics.py").read_text(encoding="utf-8")[:60000])
  return str(path)


@pytest.fixture(scope="module")
def adapted(make_config, trained_lm, prose_path, tmp_path_factory, metrics_of):
  """The trained code model adapted to prose for 30 steps: all of it, and with LoRA (rank 8)."""
  common = dict(steps=30, init_from=trained_lm, checkpoint_every=30, eval_steps=8,
                **{"data.path": prose_path, "model.scan_layers": False, "optim.warmup_steps": 2})
  runs = {}
  for name, extra in (("full", {}), ("lora", {"lora.targets": TARGETS, "lora.rank": 8})):
    config = make_config(**common, **extra)
    workdir = str(tmp_path_factory.mktemp(name))
    final = train.train_and_evaluate(config, workdir, devices=ONE)
    runs[name] = dict(config=config, workdir=workdir, eval=final["eval/loss"],
                      first=metrics_of(workdir)[0]["train/loss"])
  base = load(trained_lm, devices=ONE)
  runs["before"] = measure.eval_loss(runs["full"]["config"], base.params, ONE)
  return runs


def test_adapters_are_a_small_share_of_gpt2_small():
  config = gpt2.get_config("small")
  config.update_from_flattened_dict({"lora.targets": ".*(attn|mlp)/.*", "lora.rank": 8,
                                     "compilation_cache_dir": ""})
  run = build.build(config, ONE)
  # 12 layers of rank-8 adapters, r x (inputs + outputs) each: four 768 x 768 projections and
  # the MLP's 768 x 3072 and 3072 x 768.
  per_layer = 8 * (4 * (768 + 768) + 2 * (768 + 3072))
  assert run.num_trainable == 12 * per_layer
  assert run.num_trainable / run.num_params < 0.02


def test_adapters_shard_like_their_kernels(make_config):
  config = make_config(batch_size=8, **{"lora.targets": TARGETS, "mesh.fsdp": 2,
                                        "mesh.tensor": 2, "model.scan_layers": True})
  query = build.build(config).shardings.params["layers"]["attn"]["query"]
  assert query["kernel"].spec == P(None, "fsdp", "tensor", None)  # N x D x H x K
  assert query["kernel_lora_a"].spec == P(None, "fsdp", None)  # N x D x rank
  assert query["kernel_lora_b"].spec == P(None, None, "tensor")  # N x rank x (H * K)


def test_only_adapters_train_and_hold_optimizer_state(make_config, trained_lm):
  """QLoRA (int8 base): three steps leave every base array bitwise as it was, int8 still, and the
  optimizer's moments cover the adapters alone."""
  config = make_config(init_from=trained_lm, **{"lora.targets": TARGETS, "lora.rank": 4,
                                                "lora.base_qtype": "int8",
                                                "model.scan_layers": False})
  run = build.build(config, ONE)
  programs = build.Programs(run.lower_init().compile(), run.lower_train_step().compile(), None, 0)
  state = run.fresh_state(programs)
  base_before = jax.device_get(adapt.trainable_split(config)(state.params)[1])
  batches = iter(run.task.train_data(run.local_batch_size, config.seed))
  for _ in range(3):
    state, _ = programs.train_step(state, run.global_batch(next(batches)))
  trainable, base_after = jax.device_get(adapt.trainable_split(config)(state.params))
  jax.tree.map(np.testing.assert_array_equal, base_after, base_before)
  assert base_after["layer_0"]["mlp"]["up"]["kernel"].array.qvalue.dtype == jnp.int8
  assert all(np.any(b != 0) for b in adapter_named("_lora_b", trainable))  # B left zero
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  assert moments == 2 * run.num_trainable  # Adam's two moments, for the adapters alone


def test_first_step_is_the_base_models(adapted):
  # B starts at zero, so the adapted model computes exactly what the base computes.
  assert adapted["lora"]["first"] == pytest.approx(adapted["full"]["first"], rel=1e-6)


def test_checkpoint_holds_adapters_and_refers_to_the_base(adapted, trained_lm):
  state = os.path.join(adapted["lora"]["workdir"], "checkpoints", "30", "state")
  saved = ocp.PyTreeCheckpointer().metadata(state).item_metadata.tree["params"]
  names = [str(path[-1].key) for path, _ in jax.tree_util.tree_leaves_with_path(saved)]
  assert names and all(lora.is_adapter((name,)) for name in names)
  run = load(adapted["lora"]["workdir"], devices=ONE)  # the base comes back through init_from
  assert run.config.init_from == trained_lm
  assert run.params["embed"]["embedding"].shape == (256, 32)


def test_lora_recovers_most_of_a_full_fine_tune(adapted):
  """The issue's bar: at least 80% of full fine-tuning's improvement in the same 30 steps.
  Measured: 2.1782 before, 1.9461 fine-tuned in full, 1.9744 with LoRA (88%)."""
  before, full, lora_loss = adapted["before"], adapted["full"]["eval"], adapted["lora"]["eval"]
  print(f"prose eval loss: base {before:.4f}, full fine-tune {full:.4f}, LoRA {lora_loss:.4f}")
  assert lora_loss < before
  assert (before - lora_loss) >= 0.8 * (before - full)


def test_merged_equals_unmerged(adapted, tmp_path):
  merged = lora.merge_run(adapted["lora"]["workdir"], str(tmp_path / "merged"), ONE)
  assert merged == pytest.approx(adapted["lora"]["eval"], abs=1e-5)  # the same eval batches
  plain = load(str(tmp_path / "merged"), devices=ONE)
  assert not plain.config.lora.targets and not plain.config.model.tie_embeddings
  assert not any(lora.is_adapter((str(path[-1].key),))
                 for path, _ in jax.tree_util.tree_leaves_with_path(plain.params))


def adapter_named(suffix: str, tree) -> list:
  return [x for path, x in jax.tree_util.tree_leaves_with_path(tree)
          if str(path[-1].key).endswith(suffix)]


def test_adapter_dropout_only_in_training(make_config):
  config = make_config(**{"lora.targets": TARGETS, "lora.rank": 4, "lora.dropout": 0.5})
  run = build.build(config, ONE)
  task = run.task
  batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in task.batch_spec(2).items()}
  params = jax.jit(run.init_fn)(0).params  # as a run initialises (adapters on the tied head too)
  params = jax.tree_util.tree_map_with_path(  # B = 1: the adapters now change the output
      lambda path, x: jnp.ones_like(x) if str(path[-1].key).endswith("_lora_b") else x, params)
  evals = [jax.jit(task.eval_sums)(params, batch)["loss"] for _ in range(2)]
  loss = jax.jit(lambda p, key: task.loss(p, batch, key, True).total)
  train_losses = [loss(params, jax.random.key(i)) for i in range(2)]
  assert evals[0] == evals[1]  # evaluation needs no rng and drops nothing
  assert train_losses[0] != train_losses[1]  # training drops adapter inputs


@pytest.mark.parametrize("overrides, message", [
    ({"lora.targets": "nothing/.*"}, "matches no module"),
    ({"lora.targets": ".*attn/.*", "lora.rank": 0}, "lora.rank=0 must be an integer >= 1"),
    ({"lora.targets": ".*attn/.*", "lora.rank": -4}, "lora.rank=-4 must be an integer >= 1"),
    ({"lora.targets": ".*attn/.*", "lora.base_qtype": "int3"}, "lora.base_qtype='int3'"),
    ({"lora.targets": "(attn"}, "is not a regular expression"),
])
def test_bad_settings_fail_in_one_line_before_compiling(make_config, overrides, message):
  with pytest.raises(ConfigError, match=message) as e:
    build.build(make_config(**overrides), ONE)
  assert "\n" not in str(e.value)
