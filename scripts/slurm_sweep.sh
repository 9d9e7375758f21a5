#!/bin/bash
# The depth-vs-width grid (configs/depth_width/*.yaml, 10 runs) as a SLURM job array, one GPU per
# run, then one report over all of them:
#
#   jid=$(sbatch --parsable scripts/slurm_sweep.sh)
#   sbatch --dependency=afterany:${jid} --wrap "python -m igsm report logs/depth_width --out report/depth_width"
#
# Array task k trains the k-th config as logs/depth_width/<stem>/version_N/ (the same names as
# scripts/sweep.sh --prefix depth_width, so either can finish what the other started). A requeued
# task (time limit: --signal, see scripts/slurm_example.sh) resumes from its own last.ckpt. Use
# more GPUs per run by raising --gpus-per-node and --ntasks-per-node together with
# trainer.devices (one srun task per GPU, as in scripts/slurm_example.sh).
#
#SBATCH --job-name=igsm-depth-width
#SBATCH --array=0-9                  # one task per config below (keep it in step with CONFIGS)
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR}"               # the repository root

CONFIGS=(configs/depth_width/*.yaml)   # sorted by the shell: the same order in every task
CFG=${CONFIGS[$SLURM_ARRAY_TASK_ID]}
STEM=$(basename "${CFG}" .yaml)
NAME=depth_width/${STEM}
ARGS=("config=${CFG}" "name=${NAME}" trainer.devices=1)

if compgen -G "logs/${NAME}/version_*/checkpoints/last.ckpt" > /dev/null \
   || compgen -G "logs/${NAME}/version_*/hpc_ckpt_*.ckpt" > /dev/null; then
  ARGS+=(ckpt_path=last)
fi
python train.py "${ARGS[@]}" print_config=true > /dev/null   # a bad key fails before the GPU is taken
srun python train.py "${ARGS[@]}"
