"""Shared test setup: 8 emulated CPU devices, offline tracking, and a tiny LM config.

XLA reads its flags once, when JAX first starts a backend, so they are set here, before any test
module imports jax. Every test process sees 8 CPU devices, and tests pick `jax.devices()[:1]` or
all 8 to compare layouts within one process. The suite compiles dozens of tiny programs, and
LLVM's optimisation passes would take about 80% of each compile while saving nothing at this
size, so they are off (optimisation level 0 changes speed, not what the programs compute).
"""

import os

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0",
]).strip()
os.environ["JAX_PLATFORMS"] = "cpu"  # the tests' devices, even where a GPU or libtpu is present
os.environ["WANDB_MODE"] = "offline"  # W&B never reaches the network from a test
os.environ["WANDB_SILENT"] = "true"

import json
import pathlib
import socket
import sysconfig

import pytest

from configs import base

# A few real stdlib modules: English comments and Python code, the same on every Python 3.11.
CORPUS_FILES = ("json/encoder.py", "json/decoder.py", "textwrap.py", "bisect.py")


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> str:
  """A ~40 kB text file: big enough for train and validation windows, small enough to read fast."""
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  text = "\n".join((stdlib / name).read_text(encoding="utf-8") for name in CORPUS_FILES)
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text(text, encoding="utf-8")
  return str(path)


def tiny_config(corpus: str, **overrides):
  """A 2-layer, width-32 byte-level GPT on `corpus` that compiles and steps in moments.

  `overrides` take dotted keys as on the command line: tiny_config(p, **{"optim.lr": 1.0}).
  """
  c = base.get_config()
  c.compilation_cache_dir = ""  # in-process tests stay off the user's cache
  c.steps = 4
  c.batch_size = 8
  c.seq_len = 32
  c.log_every = 1
  c.eval_every = 0
  c.eval_steps = 2
  c.checkpoint_every = 0
  c.data.source = "text"
  c.data.path = corpus
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_model = 32
  c.model.d_ff = 64
  c.model.max_len = 64
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 2
  c.tracking.tensorboard = False
  c.tracking.progress = False
  c.sample.prompt = ""
  c.update_from_flattened_dict(overrides)
  c.lock()
  return c


@pytest.fixture(scope="session")
def make_config(corpus_path):
  """make_config(**overrides) -> a locked tiny LM config (see `tiny_config`)."""
  return lambda **overrides: tiny_config(corpus_path, **overrides)


@pytest.fixture
def workdir(tmp_path) -> str:
  return str(tmp_path / "workdir")


@pytest.fixture(scope="session")
def read_checkpoint():
  """read_checkpoint(config, workdir) -> (step, TrainState) of the newest checkpoint, on 1 device.

  Whatever mesh wrote it, it is read into a one-device layout, so runs on different meshes compare.
  """
  import jax

  from bigjax import build, checkpoint

  def read(config, workdir):
    one_device = config.copy_and_resolve_references()
    one_device.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    abstract = build.build(one_device, jax.devices()[:1]).abstract
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", config.keep_checkpoints)
    try:
      step, state, _ = ckpt.restore(abstract)
    finally:
      ckpt.close()
    return step, state

  return read


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def metrics_of():
  """metrics_of(workdir) -> the rows of WORKDIR/metrics.jsonl, in the order they were written."""
  return read_metrics


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a connection fails the test instead of waiting on a download."""
  def refuse(self, address, *args):
    raise AssertionError(f"test tried to reach the network: {address}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))


def initialised_run(config, workdir: str) -> str:
  """`workdir` holding a checkpoint of `config`'s freshly initialised state (step 0), as a trained
  run's does: for tests of the commands that use a run, which need one but not its training."""
  import jax
  import jax.numpy as jnp

  from bigjax import build, checkpoint

  run = build.build(config, jax.devices()[:1])
  state = run.lower_init().compile()(jnp.int32(config.seed))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
  try:
    ckpt.save(0, state, {}, config.to_dict())
  finally:
    ckpt.close()
  return workdir


@pytest.fixture(scope="session")
def lm_run(corpus_path, tmp_path_factory) -> str:
  """The workdir of a tiny byte-level LM, initialised, with the plain chat template. Its output
  projection is untied: a tied one makes an untrained model's argmax repeat the last byte, so
  greedy continuations would not depend on the prompt."""
  config = tiny_config(corpus_path, **{"data.chat_template": "plain",
                                       "model.tie_embeddings": False})
  return initialised_run(config, str(tmp_path_factory.mktemp("lm_run")))


@pytest.fixture(scope="session")
def killed_and_resumed(read_checkpoint):
  """killed_and_resumed(config, workdir) -> (straight, resumed): the newest (step, TrainState)
  of `config` trained to its last step, and again after that step's checkpoint is deleted and the
  run restarted (as if killed between its last two saves; config.checkpoint_every must save
  earlier). A method resumes exactly when the two are bitwise equal."""
  import shutil

  import jax

  from bigjax import train

  def run(config, workdir):
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    straight = read_checkpoint(config, workdir)
    shutil.rmtree(f"{workdir}/checkpoints/{config.steps}")
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    return straight, read_checkpoint(config, workdir)

  return run


@pytest.fixture(scope="session")
def trained_lm(corpus_path, tmp_path_factory) -> str:
  """The workdir of the tiny LM trained 300 steps on the corpus (unrolled layers): the model the
  adaptation and compression tests adapt, quantize, prune and distill from."""
  import jax

  from bigjax import train

  workdir = str(tmp_path_factory.mktemp("trained_lm"))
  config = tiny_config(corpus_path, steps=300, eval_steps=8,
                       **{"model.scan_layers": False, "optim.lr": 1e-2})
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  return workdir


def pytest_collection_modifyitems(items):
  """The README test first: it is the longest file (ten minutes on 2 cores), so with two workers
  taking whole files it starts at once instead of last."""
  items.sort(key=lambda item: not item.nodeid.startswith("tests/test_readme.py"))
