#!/usr/bin/env bash
# The seed's grid (3 backbones x unfreeze {0,1,3,5} x dense {0,1,2,3} = 48 runs) as a Slurm job array:
# each task runs its own share of the grid into one shared project folder, then one more job builds the
# results tables once every task is done.
#
#   sbatch examples/slurm_sweep.sh                     # 8 tasks, 6 runs each
#   sbatch --dependency=afterok:<jobid> --wrap "scenecls sweep --project $PWD/runs --collect"
#
# A task that dies (time limit, node failure) is picked up by resubmitting it (sbatch --array=<i>): it
# skips its finished runs and resumes the interrupted one. The folder must be on a file system every
# node sees; the feature cache under $SCENECLS_HOME is shared the same way and safe to build from
# several nodes at once (an entry is published by one atomic rename; the others reuse it).
#SBATCH --job-name=scenecls-sweep
#SBATCH --array=1-8
#SBATCH --cpus-per-task=8
#SBATCH --mem=24G
#SBATCH --time=24:00:00
#SBATCH --output=logs/sweep-%A_%a.log
set -euo pipefail

export SCENECLS_HOME="${SCENECLS_HOME:-$PWD/.scenecls}"     # data set and caches, shared by all tasks
export SCENECLS_PROGRESS_SECONDS="${SCENECLS_PROGRESS_SECONDS:-60}"  # a progress line a minute in the log

scenecls sweep \
    --project "$PWD/runs" \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
