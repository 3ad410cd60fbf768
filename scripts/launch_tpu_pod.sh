#!/usr/bin/env bash
# Runs one command on every worker (host) of a Cloud TPU pod slice.
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE setup
#       copies this checkout to ~/bigjax on every worker and installs the TPU requirements there
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE -- python -m bigjax.train \
#       --config=configs/llama.py:7b --workdir=gs://BUCKET/runs/llama_7b
#       runs the command in ~/bigjax on every worker at once
#
# Every worker runs the same command: on a pod slice jax.distributed.initialize() finds the other
# workers by itself (bigjax.sharding.initialize_distributed sees TPU_WORKER_HOSTNAMES), each
# process feeds its own chips, and only process 0 prints. The workdir must be storage every worker
# reaches (a gs:// bucket or a shared filesystem): all of them write the checkpoint together.
# Check first that the config fits the slice, from any machine:
#   python scripts/aot_compile.py --config=configs/llama.py:7b --topology=v5p-64
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

usage="usage: $0 TPU_NAME ZONE setup | $0 TPU_NAME ZONE -- COMMAND..."
[[ $# -ge 3 ]] || { echo "$usage" >&2; exit 2; }
tpu=$1 zone=$2 action=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)

run() {  # the command, or with DRY_RUN=1 its shell-quoted form
  if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1"
}

case $action in
  setup)
    run gcloud compute tpus tpu-vm scp --zone="$zone" --worker=all --recurse "$repo" "$tpu":~/bigjax
    on_all_workers "cd ~/bigjax && pip install -r requirements.txt -r requirements-tpu.txt"
    ;;
  --)
    [[ $# -ge 1 ]] || { echo "$usage" >&2; exit 2; }
    on_all_workers "cd ~/bigjax && $(printf '%q ' "$@")"
    ;;
  *)
    echo "$usage" >&2; exit 2
    ;;
esac
