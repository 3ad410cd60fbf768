"""Checkpoints survive damage and device changes, hold no pickle, and bad input never costs one.

In-process runs on the 8 emulated CPU devices that conftest sets up.
"""

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigjax import optim
from bigjax.config_checks import ConfigError
from bigjax.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(make_config, tmp_path_factory):
  """A run on 8 devices (2 data x 2 fsdp x 2 tensor) checkpointed at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = make_config(**{"steps": 4, "checkpoint_every": 2, "mesh.data": 2, "mesh.fsdp": 2,
                          "mesh.tensor": 2})
  train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def continued(trained, make_config, tmp_path_factory):
  """Final metrics of the 8-device run continued from its step-4 checkpoint to step 6."""
  config = make_config(steps=6, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  return train_and_evaluate(config, _copy(trained, tmp_path_factory.mktemp("continued")))


def _copy(workdir, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(workdir, dst)
  return dst


def _file_hashes(directory):
  """Every file's hash but WORKDIR/lock's: each run writes its own name there."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in set(files) - {"lock"}:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.mark.parametrize("layout", [
    (4, {"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 1}),
    (2, {"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 2}),
    (1, {"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1}),
], ids=["4dev_fsdp", "2dev_tensor", "1dev"])
def test_checkpoint_from_8_devices_continues_on_fewer(trained, continued, make_config, tmp_path,
                                                      layout):
  num_devices, mesh = layout
  reference = continued
  resumed = train_and_evaluate(make_config(steps=6, **mesh), _copy(trained, tmp_path / "new"),
                               devices=jax.devices()[:num_devices])
  np.testing.assert_allclose(resumed["train/loss"], reference["train/loss"], rtol=1e-5)
  np.testing.assert_allclose(resumed["train/param_norm"], reference["train/param_norm"],
                             rtol=1e-5)


def test_damaged_latest_checkpoint_falls_back_and_is_kept(trained, make_config, tmp_path,
                                                          caplog):
  workdir = _copy(trained, tmp_path)
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  for root, _, files in os.walk(state_dir):  # truncate every array file of step 4
    for name in files:
      open(os.path.join(root, name), "wb").close()
  with caplog.at_level(logging.WARNING):
    final = train_and_evaluate(make_config(steps=5, **{"mesh.data": 2, "mesh.fsdp": 2,
                                                       "mesh.tensor": 2}), workdir)
  assert "checkpoint step 4 is unreadable" in caplog.text and "resuming from step 2" in caplog.text
  assert np.isfinite(final["train/loss"])
  damaged = os.listdir(os.path.join(workdir, "checkpoints", "damaged"))
  assert len(damaged) == 1 and damaged[0].startswith("4-")  # set aside, not deleted
  assert {"2", "5"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))


def test_checkpoints_hold_no_pickle(trained):
  for root, _, files in os.walk(os.path.join(trained, "checkpoints")):
    for name in files:
      head = open(os.path.join(root, name), "rb").read(2)
      assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), \
          f"{name} starts with a pickle header"
      assert not name.endswith((".pkl", ".pickle"))


def _read_only(tmp_path):
  """A directory this process cannot write: chmod for a user; root writes anyway, so for root a
  read-only bind mount of it (undone at the end of the test by `_unmount`)."""
  path = tmp_path / "readonly"
  path.mkdir()
  if os.geteuid() != 0:
    os.chmod(path, 0o500)
    return str(path)
  mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"running as root, and mount is not permitted here ({mounted.stderr.strip()}): "
                f"root writes into any directory it cannot mount read-only")
  _MOUNTS.append(str(path))
  return str(path)


_MOUNTS = []


@pytest.fixture
def _unmount():
  yield
  while _MOUNTS:
    subprocess.run(["umount", _MOUNTS.pop()], check=True)


def _file_in_path(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  return str(tmp_path / "file" / "run")


def _file_as(name):
  def make(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).write_text("not a directory")
    return str(tmp_path / "run")
  return make


# (name, config overrides, workdir maker or None, text of the one-line error). The full table of
# bad values is in test_config_checks.py; these also check that a refused run leaves the existing
# checkpoints exactly as they were.
BAD_CONFIGS = [
    ("mesh_product", {"mesh.data": 3}, None, "needs 3 devices but 8 are present"),
    ("two_free_axes", {"mesh.fsdp": -1, "mesh.tensor": -1}, None, "at most one mesh axis"),
    ("batch_split", {"batch_size": 12}, None, "not divisible by the 8 data-parallel devices"),
    ("keep_zero", {"keep_checkpoints": 0}, None, "keep_checkpoints=0 must be an integer >= 1"),
    ("negative_cadence", {"checkpoint_every": -1}, None, "checkpoint_every=-1"),
    ("missing_path", {"data.path": "/no/such/file.txt"}, None, "does not exist"),
    ("read_only_workdir", {}, _read_only, "is not writable"),
    ("workdir_under_a_file", {}, _file_in_path, "cannot be created (Not a directory)"),
    ("checkpoints_is_a_file", {}, _file_as("checkpoints"), "is a file where a directory should be"),
    ("best_is_a_file", {}, _file_as("best"), "is a file where a directory should be"),
]


@pytest.mark.parametrize("name,overrides,make_workdir,message", BAD_CONFIGS,
                         ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_one_line_error_and_checkpoints_untouched(trained, make_config, tmp_path,
                                                                _unmount, name, overrides,
                                                                make_workdir, message):
  before = _file_hashes(trained)
  workdir = make_workdir(tmp_path) if make_workdir else trained
  with pytest.raises(ConfigError) as error:
    train_and_evaluate(make_config(**overrides), workdir)
  assert message in str(error.value)
  assert "\n" not in str(error.value)
  assert _file_hashes(trained) == before


def test_empty_data_file_is_a_clear_error(make_config, tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ConfigError, match="fewer than seq_len"):
    train_and_evaluate(make_config(**{"data.path": str(empty)}), str(tmp_path / "run"))


def test_changed_model_against_old_checkpoint_is_an_error_and_keeps_it(trained, make_config):
  before = _file_hashes(trained)
  wider = make_config(**{"model.d_model": 64, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  with pytest.raises(ConfigError, match=r"written with another config \(model.d_model=32 there, "
                                        r"64 here\); .* --resume_with_changes"):
    train_and_evaluate(wider, trained)
  # Told the change is intended, the arrays still cannot fit: the shape check says so.
  with pytest.raises(ConfigError, match="does not match this config") as error:
    train_and_evaluate(wider, trained, resume_with_changes=True)
  assert "params/" in str(error.value) and "new --workdir" in str(error.value)
  assert _file_hashes(trained) == before


def test_resume_with_changes_continues_with_them(trained, make_config, tmp_path, caplog):
  """A changed learning rate is refused, then accepted when said to be intended; changing only
  what may change on resume (steps, cadences, tracking, mesh) needs no flag (see `continued`)."""
  workdir = _copy(trained, tmp_path)
  config = make_config(steps=5, **{"optim.lr": 1e-3, "mesh.data": 2, "mesh.fsdp": 2,
                                   "mesh.tensor": 2})
  with pytest.raises(ConfigError, match=r"optim.lr=0.003 there, 0.001 here"):
    train_and_evaluate(config, workdir)
  with caplog.at_level(logging.WARNING):
    final = train_and_evaluate(config, workdir, resume_with_changes=True)
  assert "resuming" in caplog.text and "optim.lr=0.003 there, 0.001 here" in caplog.text
  assert final["train/lr"] == pytest.approx(float(optim.schedule(config.optim, 5)(4)))  # the new
  assert "5" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_damaged_data_position_falls_back_like_damaged_arrays(trained, make_config, tmp_path,
                                                             caplog):
  """Valid JSON, wrong content: the iterator refuses it, so the whole step is set aside."""
  workdir = _copy(trained, tmp_path)
  (pathlib.Path(workdir) / "checkpoints" / "4" / "data" / "metadata").write_text("{}")
  with caplog.at_level(logging.WARNING):
    train_and_evaluate(make_config(steps=5, **{"mesh.data": 2, "mesh.fsdp": 2,
                                               "mesh.tensor": 2}), workdir)
  assert "checkpoint step 4 is unreadable (KeyError" in caplog.text
  assert "resuming from step 2" in caplog.text
  assert os.listdir(os.path.join(workdir, "checkpoints", "damaged"))[0].startswith("4-")


@pytest.mark.parametrize("flag,message", [
    ("--config.optim.lrr=1", "lrr"),  # a typo in a key
    ("--config.steps=many", "steps"),  # a value of the wrong type
    ("--config=configs/no_such_config.py", "no_such_config"),
], ids=["unknown_key", "wrong_type", "missing_config_file"])
def test_bad_command_line_fails_before_jax_starts(flag, message, tmp_path):
  args = [sys.executable, "-m", "bigjax.train", f"--workdir={tmp_path}", flag]
  if not flag.startswith("--config="):
    args.insert(3, "--config=configs/gpt_tiny.py")
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  assert message in done.stderr
  assert "Traceback" not in done.stderr
  assert not os.listdir(tmp_path)
