"""Same data, any number of processes: two JAX processes on localhost build, as global arrays,
exactly the batches one process reads, and a one-process job continues from their position."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker

from bigjax.data import dialogues, prepare
from bigjax.tasks.lm import LanguageModelTask
from bigjax.tasks.sft import SftTask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = 3

# Run by each of the two processes: the task's rows of each batch for this process, laid out as
# one global array over both processes' devices (as the loop does), then gathered back whole.
WORKER = """
import json, sys
import jax
import numpy as np
from jax.experimental import multihost_utils

port, process_id, jobs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
from bigjax import build
from configs import base

for overrides, out in jobs:
  config = base.get_config()
  config.update_from_flattened_dict(overrides)
  config.lock()
  run = build.build(config)
  batches = iter(run.task.train_data(run.local_batch_size, config.seed))
  gathered, state = [], None
  for b in range(%d):
    global_batch = run.global_batch(next(batches))
    gathered.append({k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
                     for k, v in global_batch.items()})
    state = batches.get_state() if b == %d - 2 else state
  if process_id == 0:
    np.savez(out, **{f"{b}/{k}": v for b, batch in enumerate(gathered) for k, v in batch.items()})
    json.dump(state, open(out + ".state.json", "w"))
""" % (BATCHES, BATCHES)


def two_process_batches(jobs: list[tuple[dict, str]]) -> None:
  """Runs WORKER on two processes; each job's batches and position land in its file."""
  port = str(portpicker.pick_unused_port())
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device per process
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, port, str(i), json.dumps(jobs)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  for p in procs:
    output = p.communicate(timeout=300)[0]
    assert p.returncode == 0, output[-3000:]


def check_same_batches(task, overrides: dict, out: str) -> None:
  """The two-process job's global batches are the one-process job's, and the one-process job
  resumes where the two-process job stopped (an elastic restart)."""
  saved, state = np.load(out), json.load(open(out + ".state.json"))
  one = iter(task.train_data(overrides["batch_size"], overrides["seed"]))
  for b in range(BATCHES):
    expected = next(one)
    assert {k for k in saved.files if k.startswith(f"{b}/")} == {f"{b}/{k}" for k in expected}
    for k in expected:
      np.testing.assert_array_equal(saved[f"{b}/{k}"], expected[k], err_msg=f"{out} {b} {k}")
  resumed = iter(task.train_data(overrides["batch_size"], overrides["seed"]))
  resumed.set_state(state)  # the position after BATCHES - 1 batches, from two processes
  np.testing.assert_array_equal(next(resumed)["inputs"], saved[f"{BATCHES - 1}/inputs"])


def test_one_and_two_processes_read_the_same_global_batches(tmp_path, make_config, corpus_path):
  prepare.prepare([corpus_path], str(tmp_path / "shards"), "byte", shard_mb=0.01,
                  record_tokens=100, progress=False)
  lm = {"data.source": "shards", "data.path": str(tmp_path / "shards"), "seq_len": 32,
        "batch_size": 8, "seed": 3, "model.num_layers": 1, "model.d_model": 32,
        "model.d_ff": 64, "model.max_len": 64, "compilation_cache_dir": ""}
  dialogues.write(str(tmp_path / "chats"), train=100, validation=10)
  chat = {**lm, "task": "sft", "data.source": "jsonl", "data.path": str(tmp_path / "chats"),
          "data.chat_template": "plain", "seq_len": 64}
  jobs = [(lm, str(tmp_path / "lm.npz")), (chat, str(tmp_path / "sft.npz"))]
  two_process_batches(jobs)
  check_same_batches(LanguageModelTask(make_config(**lm)), *jobs[0])
  check_same_batches(SftTask(make_config(**chat)), *jobs[1])
