"""One process per GPU on one machine: the same command N times, each told who it is.

    python -m bigjax.launch --gpus=8 -- python -m bigjax.train --config=configs/llama.py:1b \
        --workdir=runs/llama_1b
    python -m bigjax.launch --gpus=8 --dry_run -- ...   # print each process's command, run nothing

Usually unnecessary: a single process sees every GPU of its machine, so the plain command already
trains on all of them. One process per GPU is for what needs it (per-GPU pinning, a setup like the
multi-node one). Process i sees only GPU i (CUDA_VISIBLE_DEVICES) and finds the others through
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
`bigjax.sharding.initialize_distributed` reads. If one process fails, the others are stopped:
a job missing a peer would wait in a collective until its heartbeat timeout.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time


def process_envs(num_processes: int, port: int, base_env: dict[str, str]) -> list[dict[str, str]]:
  """The environment of each process: its own GPU and its place in the job."""
  return [{**base_env,
           "CUDA_VISIBLE_DEVICES": str(i),
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": str(num_processes),
           "JAX_PROCESS_ID": str(i)}
          for i in range(num_processes)]


def describe(env: dict[str, str], command: list[str]) -> str:
  """The shell line that starts one process, as --dry_run prints it."""
  keys = ("CUDA_VISIBLE_DEVICES", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  return " ".join([f"{k}={env[k]}" for k in keys] + [shlex.quote(a) for a in command])


def run(command: list[str], envs: list[dict[str, str]]) -> int:
  """Starts every process, waits, and returns the first failure's exit status (0 if none)."""
  procs = [subprocess.Popen(command, env=env) for env in envs]
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [c for c in codes if c not in (None, 0)]
      if failed or all(c == 0 for c in codes):
        break
      time.sleep(0.5)
  finally:  # a failure, or Ctrl-C here: stop the rest, they cannot finish alone
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)  # the loop saves a checkpoint on SIGTERM
    for p in procs:
      p.wait()
  return failed[0] if failed else 0


def _bad_input(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m bigjax.launch", description=__doc__.split("\n")[0])
  parser.add_argument("--gpus", type=int, required=True, help="processes, one per GPU")
  parser.add_argument("--port", type=int, default=12355, help="coordinator port on this machine")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    return _bad_input("no command; put it after --, e.g. -- python -m bigjax.train --config=...")
  if args.gpus < 1:
    return _bad_input(f"--gpus={args.gpus}; use the number of GPUs on this machine (1 or more)")
  envs = process_envs(args.gpus, args.port, dict(os.environ))
  if args.dry_run:
    print("\n".join(describe(env, command) for env in envs))
    return 0
  return run(command, envs)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
