"""`bigjax.export`: StableHLO artifacts that a fresh process importing only jax and numpy reloads
and runs to the same logits and the same greedy tokens, at any batch size, for cpu, cuda and tpu,
with the parameters as inputs (so an artifact's size does not grow with them)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import bigjax
from bigjax import build, export, generate
from bigjax.config_checks import ConfigError
from bigjax.hf.__main__ import write_run

ONE = jax.devices()[:1]
# The reloading process runs only scripts/run_exported.py: forward logits at batch sizes 1 and 5,
# then 8 greedy tokens through prefill and decode, and reports which libraries it imported.
RELOAD = """
import json, runpy, sys
import numpy as np
runner = runpy.run_path("scripts/run_exported.py")
directory, tokens_path, out_path = sys.argv[1:]
manifest = json.load(open(directory + "/manifest.json"))
params = runner["load_params"](directory, manifest)
forward = runner["load_function"](directory, manifest, "forward")
tokens = np.load(tokens_path)
greedy = runner["greedy"](directory, manifest, params, tokens[:1, :5], 8)
np.savez(out_path, b1=forward.call(params, tokens[:1]), b5=forward.call(params, tokens),
         greedy=greedy)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _byte_run(make_config, workdir: str, **overrides):
  """A byte-level GPT run (a step-0 checkpoint) in `workdir`, loaded back."""
  config = make_config(**overrides)
  params = jax.jit(build.build(config, ONE).init_fn)(0).params
  write_run(workdir, config.to_dict(), params)
  return bigjax.load(workdir, devices=ONE)


@pytest.fixture(scope="module")
def exported(make_config, tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  run = _byte_run(make_config, str(root / "run"), **{"model.max_len": 48})
  manifest = export.export(run, str(root / "out"))
  return run, str(root / "out"), manifest


def test_a_fresh_jax_only_process_reproduces_logits_and_greedy_tokens(exported, tmp_path):
  run, directory, _ = exported
  tokens_BxL = np.random.default_rng(0).integers(1, 256, (5, 24)).astype(np.int32)
  np.save(tmp_path / "tokens.npy", tokens_BxL)
  result = subprocess.run(
      [sys.executable, "-c", RELOAD, directory, str(tmp_path / "tokens.npy"),
       str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stderr[-2000:]
  imported = set(json.loads(result.stdout.splitlines()[-1]))
  assert not imported & {"bigjax", "flax", "optax", "orbax", "torch", "transformers"}
  out = np.load(tmp_path / "out.npz")

  # The same program in this process: equal up to float32 rounding (1e-6 on logits near 1).
  forward = jax.export.deserialize(bytearray(open(f"{directory}/forward.jax", "rb").read()))
  np.testing.assert_allclose(out["b5"], forward.call(run.params, tokens_BxL), atol=1e-6, rtol=0)
  np.testing.assert_allclose(out["b1"], out["b5"][:1], atol=1e-6, rtol=0)
  # bigjax's own forward pass (blockwise attention on CPU, summed in another order): 1e-5.
  ours = jax.jit(run.model.apply)({"params": run.params}, tokens_BxL)[0]
  np.testing.assert_allclose(out["b5"], ours, atol=1e-5, rtol=0)
  prompt_P = tokens_BxL[0, :5]
  new_N, = generate.generate(run.model, run.params, [prompt_P], max_new_tokens=8,
                             temperature=0.0)
  np.testing.assert_array_equal(out["greedy"], np.concatenate([prompt_P, new_N])[None])


def test_manifest_describes_the_calling_convention(exported):
  run, directory, manifest = exported
  with open(os.path.join(directory, "manifest.json")) as f:
    assert json.load(f) == json.loads(json.dumps(manifest))
  assert manifest["jax_version"] == jax.__version__
  assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
  assert isinstance(manifest["calling_convention_version"], int)
  assert manifest["functions"]["forward"]["inputs"] == ["int32[b,l]"]
  assert manifest["functions"]["forward"]["outputs"] == ["float32[b,l,256]"]
  assert manifest["functions"]["decode"]["inputs"][:2] == ["int32[b]", "int32[]"]
  assert manifest["config"]["model"] == run.config.model.to_dict()
  assert manifest["tokenizer"] == {"type": "byte", "eos_id": 0}
  for name in ("forward", "prefill", "decode"):
    exp = jax.export.deserialize(bytearray(open(f"{directory}/{name}.jax", "rb").read()))
    assert set(exp.platforms) == {"cpu", "cuda", "tpu"}


def test_artifact_size_does_not_grow_with_the_parameters(exported, make_config, tmp_path):
  _, directory, _ = exported
  wide = _byte_run(make_config, str(tmp_path / "run"),
                   **{"model.max_len": 48, "model.d_ff": 640})  # 10x the MLP width
  export.export(wide, str(tmp_path / "out"))
  size = lambda d, name: os.path.getsize(os.path.join(d, name))
  assert size(tmp_path / "out", "params.npz") > 3 * size(directory, "params.npz")
  for name in ("forward.jax", "prefill.jax", "decode.jax"):
    # Only the shapes written in the program change (64 -> 640: a digit per mention).
    assert abs(size(tmp_path / "out", name) - size(directory, name)) < 0.02 * size(directory, name)


def test_encoder_export_runs_and_bad_requests_are_one_line_errors(make_config, tmp_path):
  config = make_config(**{"task": "mlm", "model.token_types": 2})
  params = jax.jit(build.build(config, ONE).init_fn)(0).params
  write_run(str(tmp_path / "run"), config.to_dict(), params)
  run = bigjax.load(str(tmp_path / "run"), devices=ONE)
  manifest = export.export(run, str(tmp_path / "out"), platforms=("cpu",))
  assert list(manifest["functions"]) == ["forward"]
  forward = jax.export.deserialize(bytearray(open(tmp_path / "out" / "forward.jax", "rb").read()))
  tokens_BxL = np.random.default_rng(0).integers(0, 256, (3, 16)).astype(np.int32)
  valid_BxL = np.ones(tokens_BxL.shape, bool)
  ours = jax.jit(run.model.apply)({"params": run.params}, tokens_BxL, valid_BxL)[0]
  np.testing.assert_allclose(forward.call(run.params, tokens_BxL, valid_BxL), ours, atol=1e-5,
                             rtol=0)
  with pytest.raises(ConfigError, match="platforms=metal"):
    export.export(run, str(tmp_path / "bad"), platforms=("metal",))
