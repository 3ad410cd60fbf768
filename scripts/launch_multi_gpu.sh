#!/usr/bin/env bash
# All GPUs of one machine. One process already sees every GPU, so this is just the command:
#
#   scripts/launch_multi_gpu.sh python -m bigjax.train --config=configs/llama.py:1b --workdir=runs/1b
#
# With GPUS=N, it starts one process per GPU instead (python -m bigjax.launch: process i sees
# GPU i and joins the others through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
# DRY_RUN=1 prints what would run.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: [GPUS=N] [DRY_RUN=1] $0 COMMAND..." >&2; exit 2; }
cd "$(dirname "$0")/.."

if [[ -n ${GPUS:-} ]]; then
  exec python -m bigjax.launch --gpus="$GPUS" ${DRY_RUN:+--dry_run} -- "$@"
elif [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "$@"; echo
else
  exec "$@"
fi
