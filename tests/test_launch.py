"""The launchers: what they would run on a TPU pod, a SLURM cluster and one multi-GPU machine
(their dry runs), and two processes started by bigjax.launch really training together on CPU."""

import os
import shlex
import subprocess
import sys

import pytest

from bigjax import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("launch_tpu_pod.sh", "launch_slurm.sh", "launch_multi_gpu.sh")
TRAIN = ["python", "-m", "bigjax.train", "--config=configs/llama.py:7b",
         "--workdir=gs://bucket/runs/a b"]  # a space: quoting must survive


def sh(script, *args, **env):
  return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], cwd=ROOT,
                        env={**os.environ, "DRY_RUN": "1", **env}, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_launchers_are_valid_bash(script):
  result = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", script)],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_launchers_without_a_command_say_how_to_call_them(script):
  result = sh(script)
  assert result.returncode == 2 and result.stderr.startswith("usage:")


def test_tpu_pod_runs_the_same_command_on_every_worker():
  result = sh("launch_tpu_pod.sh", "my-tpu", "us-central2-b", "--", *TRAIN)
  assert result.returncode == 0, result.stderr
  ssh = shlex.split(result.stdout)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
  remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
  cd, train = remote.split(" && ")
  assert cd == "cd ~/bigjax" and shlex.split(train) == TRAIN  # what each worker's shell runs


def test_tpu_pod_setup_copies_the_checkout_and_installs_the_tpu_requirements():
  result = sh("launch_tpu_pod.sh", "my-tpu", "europe-west4-a", "setup")
  scp, install = [shlex.split(line) for line in result.stdout.splitlines()]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[-2:] == [ROOT, "my-tpu:~/bigjax"]
  assert "requirements-tpu.txt" in install[-1] and "--worker=all" in install


def test_slurm_job_runs_one_srun_task_per_gpu_from_the_submit_directory(tmp_path):
  result = sh("launch_slurm.sh", *TRAIN, SLURM_SUBMIT_DIR=str(tmp_path))
  assert shlex.split(result.stdout) == ["srun", "--kill-on-bad-exit=1", *TRAIN]
  header = open(os.path.join(ROOT, "scripts", "launch_slurm.sh")).read()
  # JAX gives task SLURM_LOCALID the GPU of that number, so tasks per node = GPUs per node,
  # and GPUs are requested per node (per task would hide the task's GPU from it).
  assert "#SBATCH --ntasks-per-node=8" in header and "#SBATCH --gpus-per-node=8" in header
  assert "--gpus-per-task" not in header.replace("not per task", "")


def test_multi_gpu_runs_the_command_as_it_is_by_default():
  result = sh("launch_multi_gpu.sh", *TRAIN)
  assert shlex.split(result.stdout) == TRAIN


def test_multi_gpu_with_one_process_per_gpu_gives_each_its_gpu_and_rank():
  result = sh("launch_multi_gpu.sh", *TRAIN, GPUS="4")
  lines = [shlex.split(line) for line in result.stdout.splitlines()]
  assert len(lines) == 4
  for i, line in enumerate(lines):
    assert line[:4] == [f"CUDA_VISIBLE_DEVICES={i}", "JAX_COORDINATOR_ADDRESS=127.0.0.1:12355",
                        "JAX_NUM_PROCESSES=4", f"JAX_PROCESS_ID={i}"]
    assert line[4:] == TRAIN


def test_process_envs_keep_the_callers_environment():
  envs = launch.process_envs(2, 9999, {"PATH": "/bin", "JAX_PROCESS_ID": "7"})
  assert [e["JAX_PROCESS_ID"] for e in envs] == ["0", "1"]  # a stale rank is replaced
  assert all(e["PATH"] == "/bin" and e["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:9999"
             for e in envs)


def test_launch_refuses_bad_input_in_one_line():
  for args, message in (
      (["--gpus=2"], "no command; put it after --, e.g. -- python -m bigjax.train --config=..."),
      (["--gpus=0", "--", "true"], "--gpus=0; use the number of GPUs on this machine (1 or more)")):
    result = subprocess.run([sys.executable, "-m", "bigjax.launch", *args], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {message}"]


def test_a_failing_process_stops_the_others():
  # Process 1 fails at once; process 0 would sleep for a minute if nobody stopped it.
  command = [sys.executable, "-c", "import os, sys, time; "
             "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)"]
  assert launch.run(command, launch.process_envs(2, 9999, dict(os.environ))) == 3
