"""Nothing lost: a run killed at any moment, or preempted, ends exactly where an uninterrupted
run ends. Real processes, real signals, real Orbax checkpoints."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
FLAGS = [
    "--config=configs/gpt_tiny.py", f"--config.steps={STEPS}", "--config.batch_size=8",
    "--config.seq_len=32", "--config.model.max_len=32", "--config.model.num_layers=1",
    "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.dropout=0.1",
    "--config.log_every=2", "--config.eval_every=0", "--config.eval_steps=1",
    "--config.checkpoint_every=6", "--config.sample.prompt=", "--config.tracking.progress=False",
    "--config.tracking.tensorboard=False",
    # Every run of this module compiles the same programs: the later ones load them from here.
    f"--config.compilation_cache_dir={tempfile.mkdtemp(prefix='bigjax-test-xla-cache-')}",
]


def _command(workdir):
  return [sys.executable, "-m", "bigjax.train", *FLAGS, f"--workdir={workdir}"]


def _env():
  # One CPU device, as a laptop run would have (conftest's 8 devices are for in-process tests),
  # compiled at XLA's quickest level like every test: same program, same bits, sooner.
  return {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu",
          "PYTHONUNBUFFERED": "1"}


def _run(workdir):
  done = subprocess.run(_command(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  return done


def _start(workdir):
  return subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, proc, timeout=300.0):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, f"run ended before the kill point:\n{proc.stdout.read()}"
    assert time.time() < deadline, "kill point never reached"
    time.sleep(0.005)


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return open(path).read().count('"step"') if os.path.exists(path) else 0


def _final_params(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_handlers={"state": ocp.StandardCheckpointHandler()}) as mngr:
    assert mngr.latest_step() == STEPS
    state = mngr.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return state["state"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run every interrupted one must match bit for bit."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  _run(workdir)
  return _final_params(workdir)


def test_compiled_programs_are_kept_for_the_next_run(reference):
  cache_dir = FLAGS[-1].split("=", 1)[1]
  assert os.listdir(cache_dir), "the run wrote nothing to config.compilation_cache_dir"


def _assert_same_state(reference, workdir):
  import jax
  got = _final_params(workdir)
  flat_ref = jax.tree_util.tree_leaves_with_path(reference)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  assert len(flat_ref) == len(flat_got)
  for path, want in flat_ref:
    np.testing.assert_array_equal(np.asarray(flat_got[path]), np.asarray(want), err_msg=str(path))


def _checkpoint_dir_appears(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return lambda: os.path.isdir(ckpt) and any("tmp" in d or d.isdigit() for d in os.listdir(ckpt))


KILL_POINTS = {
    # As soon as the first checkpoint directory shows up, usually while Orbax is still writing.
    "during_checkpoint_write": _checkpoint_dir_appears,
    # Between checkpoints, with steps done after the last save that must be redone identically.
    "between_checkpoints": lambda w: lambda: _logged_steps(w) >= 8,
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_then_rerun_matches_uninterrupted_run(reference, tmp_path, kill_point):
  workdir = str(tmp_path)
  proc = _start(workdir)
  _wait_for(KILL_POINTS[kill_point](workdir), proc)
  proc.kill()
  proc.wait()
  _run(workdir)
  _assert_same_state(reference, workdir)


def _interrupt(workdir, signum):
  """Sends `signum` mid-run; returns the step the run says it saved, after checking it did."""
  proc = _start(workdir)
  _wait_for(lambda: _logged_steps(workdir) >= 3, proc)
  proc.send_signal(signum)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output[-2000:]
  name = signal.Signals(signum).name
  assert f"{name} received: saved step" in output
  saved = int(output.split(f"{name} received: saved step ")[1].split()[0])
  assert str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))
  return saved


def test_sigint_saves_and_exits_cleanly(tmp_path):
  _interrupt(str(tmp_path), signal.SIGINT)


def test_sigterm_saves_exits_and_resumes_exactly(reference, tmp_path):
  workdir = str(tmp_path)
  saved = _interrupt(workdir, signal.SIGTERM)
  resumed = _run(workdir)
  assert f"resuming from step {saved}" in resumed.stdout
  _assert_same_state(reference, workdir)
