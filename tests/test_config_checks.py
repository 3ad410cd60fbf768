"""Bad configs fail before anything compiles, with one line that says what to change."""

import re
import subprocess
import sys

import jax
import pytest

from bigjax import build, optim, train
from bigjax.config_checks import ConfigError, check_config


def one_line_error(match, fn, *args):
  with pytest.raises(ConfigError, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.mark.parametrize("overrides, match", [
    ({"batch_size": 12}, r"batch_size=12 is not divisible by the 8 data-parallel devices"),
    ({"mesh.data": 2, "mesh.fsdp": 2}, r"needs 4 devices but 8 are present"),
    ({"mesh.fsdp": -1, "mesh.tensor": -1}, r"at most one mesh axis may be -1"),
    ({"optim.grad_accum_steps": 3}, r"grad_accum_steps=3"),
    ({"dtype": "float8"}, r"dtype='float8'"),
])
def test_check_config_names_the_problem(make_config, overrides, match):
  one_line_error(match, check_config, make_config(**overrides), 8)


@pytest.mark.parametrize("overrides, match", [
    ({"mesh.data": 1, "mesh.tensor": 8}, r"model.num_heads=4 is not divisible by mesh.tensor=8"),
    ({"seq_len": 128}, r"seq_len=128 is longer than model.max_len=64"),
    ({"model.attention": "flash"}, r"model.attention='flash'; use one of auto, blockwise"),
    ({"model.attention_block_len": 0}, r"model.attention_block_len=0 must be positive"),
    ({"model.positions": "rotary"}, r"model.positions='rotary'; use one of learned, rope"),
    ({"model.num_heads": 0}, r"model.num_heads=0 must be positive"),
    ({"early_stop.metric": "eval/acc"}, r"early_stop.metric='eval/acc' is not reported by "
                                        r"task lm; use one of eval/loss"),
])
def test_each_task_checks_its_own_settings(make_config, overrides, match):
  one_line_error(match, build.build, make_config(**overrides), jax.devices())


def test_a_vision_task_ignores_transformer_settings(make_config):
  """The tensor axis splits heads of Transformers; an MLP on digits has none to split."""
  config = make_config(**{"task": "classify", "data.source": "sklearn", "data.name": "digits",
                          "model.name": "mlp", "mesh.data": 1, "mesh.tensor": 8})
  assert build.build(config, jax.devices()).mesh_shape["tensor"] == 8


def test_a_good_config_resolves_the_free_mesh_axis(make_config):
  assert check_config(make_config(**{"mesh.data": -1, "mesh.tensor": 2}), 8) == {
      "data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("axis", ["fsdp", "tensor"])
def test_an_axis_set_to_minus_one_takes_the_devices_from_the_default_data_axis(make_config, axis):
  """The README's FSDP command sets only mesh.fsdp=-1; mesh.data keeps its default -1."""
  assert check_config(make_config(**{f"mesh.{axis}": -1}), 8) == {
      "data": 1, "fsdp": 1, "tensor": 1} | {axis: 8}


@pytest.mark.parametrize("overrides, match", [
    ({"task": "nope"}, r"task='nope' is unknown; use one of .*lm"),
    ({"data.path": ""}, r"data.source='text' needs --config.data.path"),
    ({"data.path": "/no/such/file.txt"}, r"data.path='/no/such/file.txt' does not exist"),
    ({"data.source": "tfds", "data.name": "nope"}, r"data.name='nope' is not a known"),
    ({"data.source": "nope"}, r"data.source='nope' is unknown"),
    ({"optim.name": "adamax"}, r"optim.name='adamax'; use one of adamw"),
    ({"optim.schedule": "exp"}, r"optim.schedule='exp'; use one of cosine"),
])
def test_the_loop_fails_before_compiling(make_config, workdir, overrides, match):
  one_line_error(match, train.train_and_evaluate, make_config(**overrides), workdir,
                 jax.devices()[:1])


def test_optimizer_table_rejects_unknown_names(make_config):
  config = make_config(**{"optim.name": "rmsprop"})
  one_line_error(r"optim.name='rmsprop'", optim.make_optimizer, config.optim, 10)


def run_cli(*flags, cwd):
  return subprocess.run([sys.executable, "-m", "bigjax.train", "--config=configs/gpt_tiny.py",
                         *flags], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def repo_root(request):
  return str(request.config.rootpath)


def test_command_line_typo_is_one_line_not_a_traceback(repo_root, tmp_path):
  result = run_cli(f"--workdir={tmp_path}", "--config.optim.lrr=1", cwd=repo_root)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert "lrr" in result.stderr and len(result.stderr.strip().splitlines()) <= 3
  assert not (tmp_path / "checkpoints").exists()


def test_command_line_config_error_is_one_line(repo_root, tmp_path):
  result = run_cli(f"--workdir={tmp_path}", "--config.mesh.data=3", cwd=repo_root)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and re.match(r"error: mesh .* needs 3 devices but 8 are present", lines[0])
