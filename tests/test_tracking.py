"""Tracking: offline W&B runs and their resumption, TensorBoard contents, images, profiles.

W&B runs in offline mode only (conftest sets WANDB_MODE=offline): no key, no network.
"""

import glob
import os
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
import wandb
from tensorboardX.proto import event_pb2

from bigjax import tracking
from bigjax.config_checks import ConfigError


def wandb_logs(workdir) -> list[bytes]:
  """The raw transaction log of each offline W&B segment in `workdir`, oldest first."""
  wandb.teardown()  # finish() returns before W&B's service process has written everything
  paths = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")))
  return [open(p, "rb").read() for p in paths]


def tensorboard_tags(workdir) -> dict[str, str]:
  """{tag: kind} from the TFRecord event files under WORKDIR/tb."""
  tags = {}
  for path in glob.glob(os.path.join(workdir, "tb", "events.*")):
    data = open(path, "rb").read()
    offset = 0
    while offset < len(data):  # record: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        tags[value.tag] = value.WhichOneof("value")
  return tags


def test_offline_wandb_run_writes_its_files_and_a_resumed_run_keeps_its_id(make_config, tmp_path):
  config = make_config(**{"tracking.wandb": "offline", "tracking.tensorboard": True})
  workdir = str(tmp_path / "run")
  params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}

  tracker = tracking.Tracker(config, workdir, params=params)
  tracker.write(1, {"train/loss": 2.5})
  tracker.write_text(1, "sample", "def f(x): return x < 1")
  tracker.close()
  run_id = open(os.path.join(workdir, "wandb_run_id")).read()

  tracker = tracking.Tracker(config, workdir, params=params)  # the run resumes
  tracker.write(2, {"eval/loss": 2.0})
  tracker.close()

  assert open(os.path.join(workdir, "wandb_run_id")).read() == run_id
  segments = glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))
  assert len(segments) == 2 and all(s.endswith("-" + run_id) for s in segments)
  first, second = wandb_logs(workdir)
  # The config as dotted keys, system information and the parameter count (3*4 + 4 = 16).
  for needle in (b"optim.lr", b"system/device_kind", b"system/jax_version", b"num_params"):
    assert needle in first
  assert b"train/loss" in first and b"eval/loss" in second and b"eval/loss" not in first
  assert b"def f(x): return x &lt; 1" in open(glob.glob(os.path.join(
      sorted(segments)[0], "files", "media", "html", "sample_*.html"))[0], "rb").read()


def test_wandb_dir_from_the_environment_wins_over_the_workdir(make_config, tmp_path,
                                                              monkeypatch):
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_files"))
  workdir = str(tmp_path / "run")
  tracker = tracking.Tracker(make_config(**{"tracking.wandb": "offline"}), workdir)
  tracker.write(1, {"train/loss": 2.5})
  tracker.close()
  assert wandb_logs(str(tmp_path / "wandb_files")) and not wandb_logs(workdir)
  assert os.path.exists(os.path.join(workdir, "wandb_run_id"))  # the id stays with the run


def test_images_go_to_tensorboard_and_wandb_from_arrays_and_files(make_config, tmp_path):
  config = make_config(**{"tracking.wandb": "offline", "tracking.tensorboard": True})
  workdir = str(tmp_path / "run")
  png = str(tmp_path / "plot.png")
  Image.fromarray(np.full((5, 6, 3), 200, np.uint8)).save(png)

  tracker = tracking.Tracker(config, workdir)
  tracker.write(3, {"train/loss": 1.0})
  tracker.write_image(3, "eval/confusion", np.zeros((4, 4, 3), np.uint8))
  tracker.write_image(3, "eval/gray", np.zeros((4, 4, 1), np.uint8))
  tracker.write_image(3, "eval/from_file", png)
  tracker.write_text(3, "sample", "hello")
  with pytest.raises(ValueError, match="HxWxC uint8"):
    tracker.write_image(3, "eval/bad", np.zeros((4, 4, 3), np.float32))
  tracker.close()

  tags = tensorboard_tags(workdir)
  assert tags["train/loss"] == "simple_value"
  assert tags["eval/confusion"] == tags["eval/gray"] == tags["eval/from_file"] == "image"
  assert tags["sample/text_summary"] == tags["config/text_summary"] == "tensor"
  wandb_logs(workdir)
  media = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "files", "media", "images",
                                 "**", "*.png"), recursive=True)
  assert sorted(os.path.basename(m).split("_3_")[0] for m in media) == [
      "confusion", "from_file", "gray"]


def test_profile_steps_trace_those_steps(make_config, tmp_path):
  config = make_config(profile_steps="2,3")
  workdir = str(tmp_path / "run")
  tracker = tracking.Tracker(config, workdir)
  step = tracker.profiled(jax.jit(lambda s, b: (s + b, s.sum())), first_step=1)
  state = jnp.zeros(8)
  for _ in range(4):
    state, _ = step(state, jnp.ones(8))
  tracker.close()
  (trace_dir,) = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*"))
  assert glob.glob(os.path.join(trace_dir, "*.xplane.pb"))  # TensorBoard's profile tab
  assert os.path.exists(os.path.join(trace_dir, "perfetto_trace.json.gz"))


@pytest.mark.parametrize("spec", ["3,2", "0,1", "a,b", "1,2,3"])
def test_bad_profile_steps_say_what_to_write(make_config, tmp_path, spec):
  with pytest.raises(ConfigError, match="profile_steps=10,13"):
    tracking.Tracker(make_config(profile_steps=spec), str(tmp_path))


def test_online_mode_needs_a_key_and_checks_it_without_the_network(tmp_path):
  """In a fresh process: W&B caches its settings per process, and this one is set offline."""
  check = ("from configs import base; from bigjax import tracking; c = base.get_config(); "
           "c.tracking.wandb = 'online'; tracking.check_wandb(c); print('ok')")
  env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
  env |= {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc"),
          "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_SILENT": "true"}

  no_key = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
  assert no_key.returncode != 0 and "set WANDB_API_KEY or run `wandb login`" in no_key.stderr

  with_key = subprocess.run([sys.executable, "-c", check], env=env | {"WANDB_API_KEY": "a" * 40},
                            capture_output=True, text=True)
  assert with_key.returncode == 0 and with_key.stdout.strip().endswith("ok"), with_key.stderr


def test_unknown_wandb_mode_is_a_one_line_error(make_config):
  with pytest.raises(ConfigError, match="use one of disabled, offline, online"):
    tracking.check_wandb(make_config(**{"tracking.wandb": "on"}))
