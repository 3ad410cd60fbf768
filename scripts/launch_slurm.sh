#!/usr/bin/env bash
# A SLURM batch job: one task per GPU on every node, each running the same command.
#
#   sbatch --nodes=2 scripts/launch_slurm.sh python -m bigjax.train \
#       --config=configs/llama.py:7b --workdir=/shared/runs/llama_7b
#
# JAX reads the job from SLURM by itself: jax.distributed.initialize() (called by
# bigjax.sharding.initialize_distributed when SLURM_NTASKS > 1) takes the coordinator from the
# first node of the step, the process count and index from SLURM_NTASKS and SLURM_PROCID, and
# gives task SLURM_LOCALID the GPU of that number. So every task must see all of its node's GPUs:
# ask for them per node (--gpus-per-node), not per task, which would hide the others. The
# workdir must be on a filesystem every node shares. Edit the defaults below to fit the cluster
# (8 GPUs per node here), or override them on the sbatch line. DRY_RUN=1 prints the srun line.
#
#SBATCH --job-name=bigjax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: sbatch $0 COMMAND..." >&2; exit 2; }
# sbatch runs a copy of this script from its spool directory; the job starts where it was submitted.
cd "${SLURM_SUBMIT_DIR:-.}"

if [[ ${DRY_RUN:-0} == 1 ]]; then
  printf '%q ' srun --kill-on-bad-exit=1 "$@"; echo
else
  # A task that dies takes the others down with it: a job missing a peer cannot go on.
  srun --kill-on-bad-exit=1 "$@"
fi
