"""Two real JAX processes on localhost (CPU devices, gloo collectives) train, checkpoint and
resume together; if one dies, the other stops with a clear message instead of hanging."""

import os
import signal
import subprocess
import sys
import time

import portpicker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(workdir, steps):
  return [
      "--config=configs/gpt_tiny.py", f"--workdir={workdir}", f"--config.steps={steps}",
      "--config.distributed.heartbeat_seconds=5",
      "--config.batch_size=8", "--config.seq_len=32", "--config.model.max_len=32",
      "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
      "--config.log_every=2", "--config.eval_every=4", "--config.eval_steps=1",
      "--config.checkpoint_every=4", "--config.sample.max_new_tokens=8",
      "--config.tracking.progress=False", "--config.tracking.tensorboard=False",
  ]


ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu",
       "PYTHONUNBUFFERED": "1"}  # one CPU device per process, quick compiles


def _start_pair(workdir, steps, *extra):
  """Two processes told their place by flags: coordinator, count and index."""
  port = portpicker.pick_unused_port()
  flags = _flags(workdir, steps) + [f"--config.distributed.coordinator=127.0.0.1:{port}",
                                    "--config.distributed.num_processes=2", *extra]
  return [subprocess.Popen(
      [sys.executable, "-m", "bigjax.train", *flags, f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def _launch_pair(workdir, steps):
  """Two processes started by bigjax.launch, told their place by the environment it sets."""
  return subprocess.run(
      [sys.executable, "-m", "bigjax.launch", "--gpus=2",
       f"--port={portpicker.pick_unused_port()}", "--", sys.executable, "-m", "bigjax.train",
       *_flags(workdir, steps)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _finish(procs, timeout=300):
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def test_two_processes_train_checkpoint_and_resume_through_the_launcher(tmp_path):
  workdir = str(tmp_path)
  first, second = _finish(_start_pair(workdir, steps=8))
  assert "2 process(es)" in first and "--- sample ---" in first
  assert "task lm:" not in second and "sample" not in second  # only process 0 prints
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]

  # Resume with the launcher: the environment now says who is who, and the job carries on.
  resumed = _launch_pair(workdir, steps=12)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
  assert "resuming from step 8" in resumed.stdout and "2 process(es)" in resumed.stdout
  logged = [line for line in open(os.path.join(workdir, "metrics.jsonl"))
            if '"train/loss"' in line]
  assert len(logged) == 6  # steps 2..12, each written once: only process 0 logs


def test_dead_peer_stops_the_other_process_with_a_message(tmp_path):
  workdir = str(tmp_path)
  # No saves or evaluations: the peer dies while the survivor is in a step's collective (a peer
  # lost mid-save is reported as the failed save it is).
  survivor, victim = _start_pair(workdir, 100_000, "--config.checkpoint_every=0",
                                 "--config.eval_every=0")
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and open(metrics).read().count("train/loss") >= 2):
    assert survivor.poll() is None and time.time() < deadline, "training never started"
    time.sleep(0.05)
  victim.kill()
  killed_at = time.time()
  output, _ = survivor.communicate(timeout=120)  # hangs here, failing the test, if it never stops
  assert survivor.returncode != 0
  assert time.time() - killed_at < 60
  assert "lost a peer" in output and "restart every process" in output, output[-1500:]


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """A preemption notice reaching one process only: both save one step together and exit."""
  workdir = str(tmp_path)
  told, other = _start_pair(workdir, steps=100_000)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and open(metrics).read().count("train/loss") >= 2):
    assert told.poll() is None and time.time() < deadline, "training never started"
    time.sleep(0.05)
  other.send_signal(signal.SIGTERM)  # process 1 alone; process 0 only learns it from process 1
  outputs = _finish([told, other], timeout=120)  # a save only one process joined would hang
  saved = [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert saved and "another process received a stop signal: saved step" in outputs[0]
  assert f"saved step {max(map(int, saved))}" in outputs[0]


def test_a_failure_on_process_zero_alone_is_reported_by_both(tmp_path):
  """SentencePiece is trained on process 0 only; when it fails, process 1 says why too, at once,
  instead of blaming a lost peer after the heartbeat."""
  corpus = tmp_path / "tiny.txt"
  corpus.write_text("a few words only\n" * 20)
  port = portpicker.pick_unused_port()
  flags = _flags(str(tmp_path / "run"), steps=4) + [
      "--config.data.source=text", f"--config.data.path={corpus}",
      "--config.data.tokenizer=sentencepiece",
      f"--config.data.tokenizer_path={tmp_path / 'new.model'}", "--config.data.vocab_size=5000",
      f"--config.distributed.coordinator=127.0.0.1:{port}", "--config.distributed.num_processes=2"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "bigjax.train", *flags, f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 2, out[-2000:]
    assert "error: process 0 failed" in out and "lost a peer" not in out
