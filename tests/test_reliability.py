"""Nothing lost, around the edges: what only real processes show, each bounded in time.

- Two runs on one workdir: the second is refused in one line; the first ends bitwise where an
  uninterrupted run ends.
- WORKDIR/checkpoints is a file: one line before compiling, and the process exits.
- The disk fills during a checkpoint (a small tmpfs): the run stops at that save with one line, the
  last good checkpoint is kept, and after space is freed a rerun ends bitwise equal, with every
  step once in metrics.jsonl.
- A damaged data position and a damaged best checkpoint: one warning each, nothing else on the
  console, and the rerun ends bitwise equal.
- SIGINT or SIGTERM while compiling: one line, the exit status of that signal, no crash; the
  rerun ends bitwise equal.
Runs are the tiny GPT of tests/test_resume.py, one CPU device, sharing a compilation cache. The
last test, in-process, caps on_nonfinite=skip.
"""

import os
import shutil
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
CACHE = tempfile.mkdtemp(prefix="bigjax-test-xla-cache-")
FLAGS = [
    "--config=configs/gpt_tiny.py", f"--config.steps={STEPS}", "--config.batch_size=8",
    "--config.seq_len=32", "--config.model.max_len=32", "--config.model.num_layers=1",
    "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.dropout=0.1",
    "--config.log_every=2", "--config.eval_every=0", "--config.eval_steps=1",
    "--config.checkpoint_every=6", "--config.optim.warmup_steps=4", "--config.sample.prompt=",
    "--config.tracking.progress=False",
    "--config.tracking.tensorboard=False", "--config.early_stop.metric=eval/loss",
    "--config.early_stop.mode=min", f"--config.compilation_cache_dir={CACHE}",
]
TIMEOUT = 300  # seconds any one process may take, on a busy 2-core machine


class Run:
  """`python -m bigjax.train` in `workdir`, its stdout and stderr in files that can be polled."""

  def __init__(self, workdir, *extra):
    self.workdir = workdir
    self._out = tempfile.TemporaryFile("w+")
    self._err = tempfile.TemporaryFile("w+")
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "bigjax.train", *FLAGS, *extra, f"--workdir={workdir}"],
        cwd=ROOT, env=env, stdout=self._out, stderr=self._err, text=True)

  def output(self):
    self._out.seek(0)
    self._err.seek(0)
    return self._out.read(), self._err.read()

  def wait_for(self, condition):
    deadline = time.time() + TIMEOUT
    while not condition():
      assert self.proc.poll() is None, f"the run ended first:\n{self.output()}"
      if time.time() > deadline:
        self.proc.kill()
        raise AssertionError(f"never got there in {TIMEOUT}s:\n{self.output()}")
      time.sleep(0.01)

  def finish(self):
    """(exit status, stdout, stderr lines) once the process has ended (killed past TIMEOUT)."""
    try:
      self.proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise AssertionError(f"still running after {TIMEOUT}s:\n{self.output()}") from None
    out, err = self.output()
    return self.proc.returncode, out, err.strip().splitlines()


def run(workdir, *extra):
  return Run(workdir, *extra).finish()


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return open(path).read().count('"train/loss"') if os.path.exists(path) else 0


def final_state(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_handlers={"state": ocp.StandardCheckpointHandler()}) as mngr:
    assert mngr.latest_step() == STEPS
    return mngr.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def assert_same_state(reference, workdir):
  import jax
  got = dict(jax.tree_util.tree_leaves_with_path(final_state(workdir)))
  for path, want in jax.tree_util.tree_leaves_with_path(reference):
    np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want), err_msg=str(path))


def assert_each_step_once(workdir):
  import json
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))
           if '"train/loss"' in line]
  assert steps == list(range(2, STEPS + 1, 2))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run (its workdir and final state) the others must match bit for bit."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  status, _, err = run(workdir)
  assert status == 0, err
  return workdir, final_state(workdir)


def test_a_second_run_on_a_workdir_is_refused_and_the_first_is_unharmed(reference, tmp_path):
  first = Run(str(tmp_path))
  first.wait_for(lambda: "compiling" in first.output()[0])
  first.proc.send_signal(signal.SIGSTOP)  # held, lock and all, while the second tries
  try:
    status, out, err = run(str(tmp_path), "--config.optim.lr=0.01")
  finally:
    first.proc.send_signal(signal.SIGCONT)
  assert status == 2 and len(err) == 1, err
  assert f"is in use by process {first.proc.pid} on" in err[0] and "compiling" not in out
  status, _, err = first.finish()
  assert status == 0, err
  assert_same_state(reference[1], str(tmp_path))
  assert_each_step_once(str(tmp_path))


def test_checkpoints_path_that_is_a_file_is_one_line_before_compiling(tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory")
  status, out, err = run(str(tmp_path))
  assert status == 2 and err == [f"error: {tmp_path}/checkpoints is a file where a directory "
                                 f"should be; move it away or use another --workdir"]
  assert "compiling" not in out


@pytest.fixture
def small_disk(tmp_path):
  """A 512 KiB tmpfs: room for one checkpoint of the tiny model (about 330 KiB), not two."""
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                f"mounting needs root (CAP_SYS_ADMIN)")
  yield mount
  subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_stops_at_the_failed_save_and_resumes_after_space_is_freed(reference,
                                                                           small_disk):
  workdir = str(small_disk / "run")
  status, _, err = run(workdir)
  assert status == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: saving step 12 to {workdir}/checkpoints failed (")
  assert "the last good checkpoint is step 6 in" in err[0] and "free there" in err[0]
  # Saves run in the background: the run stops when the write fails, at the latest at the next
  # save (step 18), which waits for it; it never trains on past a failure it knows of.
  assert _logged_steps(workdir) <= 18 // 2
  assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))

  subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space freed
  status, out, err = run(workdir)
  assert status == 0 and not err, err
  assert "resuming from step 6" in out
  assert_same_state(reference[1], workdir)
  assert_each_step_once(workdir)


def test_damaged_data_position_and_best_checkpoint_fall_back_with_one_warning_each(reference,
                                                                                  tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / "24")  # as if killed before the last save
  (workdir / "checkpoints" / "18" / "data" / "metadata").write_text('{"next_index": -3}')
  (workdir / "best" / "24" / "metrics" / "metrics").write_text("")
  status, out, err = run(str(workdir))
  assert status == 0, err
  assert len(err) == 2, err  # nothing from Orbax's threads, no traceback
  assert err[0].startswith("warning: checkpoint step 18 is unreadable (IndexError")
  assert err[0].endswith("resuming from step 12")
  assert err[1].startswith("warning: checkpoint step 24 is unreadable (JSONDecodeError")
  assert err[1].endswith("no best step is kept yet")
  assert "resuming from step 12" in out
  assert_same_state(reference[1], str(workdir))
  assert sorted(os.listdir(workdir / "best")) == ["24", "damaged"]  # a new best, the old aside


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_while_compiling_exits_cleanly_and_the_rerun_matches(reference, tmp_path,
                                                                        signum):
  workdir = str(tmp_path)
  interrupted = Run(workdir, "--config.compilation_cache_dir=")  # a cold compile, seconds long
  interrupted.wait_for(lambda: "compiling" in interrupted.output()[0])
  time.sleep(0.5)  # into lowering or XLA's compile
  interrupted.proc.send_signal(signum)
  status, _, err = interrupted.finish()
  name = signal.Signals(signum).name
  assert status == 128 + signum and err == [
      f"error: {name} received before the first step; nothing was lost: rerun the same command "
      f"to start (or resume)"], err
  status, _, err = run(workdir)
  assert status == 0, err
  assert_same_state(reference[1], workdir)


def test_skipping_non_finite_updates_stops_past_the_limit_before_saving(make_config, workdir):
  """In-process. lr=1e30 makes step 1's weights about 1e30, so from step 2 every gradient
  overflows: steps 2 and 3 are skipped, step 4 (a third in a row, past the limit of 2) is applied,
  and the run stops on its non-finite parameters without saving them."""
  import jax

  from bigjax import train
  config = make_config(steps=8, checkpoint_every=1, on_nonfinite="skip", max_consecutive_skips=2,
                       **{"optim.lr": 1e30, "optim.warmup_steps": 0,
                          "optim.schedule": "constant"})
  with pytest.raises(train.NonFiniteLoss, match=r"^after 2 skips in a row, .* at step 4; last "
                                                r"good checkpoint: step 3 "):
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved == [1, 2, 3]
