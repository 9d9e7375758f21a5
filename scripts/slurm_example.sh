#!/bin/bash
# iGSM-med (the paper's recipe) on 2 nodes x 8 GPUs with SLURM:   sbatch scripts/slurm_example.sh
#
# Lightning detects SLURM by itself (SLURMEnvironment): rank, local rank, world size and the master
# address come from SLURM's variables, so
#   - start ONE task per GPU with srun (not torchrun, not python alone): --ntasks-per-node = GPUs;
#   - trainer.devices must equal --ntasks-per-node and trainer.num_nodes must equal --nodes;
#   - the global batch of 512 is kept (data.global_batch_size): 16 GPUs x data.batch_size 32 = 512,
#     so no accumulation (med.yaml's per-device 64 would make 1,024 > 512, which the config check rejects);
#   - every task runs train.py with the same arguments; rank 0 writes logs/<name>/version_N/.
#
# Time limits: --signal=SIGUSR1@180 makes SLURM warn 3 minutes before the limit; Lightning then
# saves hpc_ckpt_<k>.ckpt into the run folder and requeues the job (scontrol requeue). The requeued
# job sees a checkpoint and passes ckpt_path=last, which resumes in the same version folder from the
# newest of last.ckpt and hpc_ckpt_<k>.ckpt: same data stream position, optimizer and schedule.
#
#SBATCH --job-name=igsm-med
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8            # data.num_workers (6) generator processes + the training process
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@180
#SBATCH --requeue
#SBATCH --open-mode=append           # a requeued job appends to the same log file
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR}"               # the repository root: configs/ and logs/ are found from here

NAME=med
ARGS=(preset=med "name=${NAME}" trainer.devices=8 trainer.num_nodes=2 trainer.strategy=ddp data.batch_size=32)

# Resume when this name already has a checkpoint (a requeued or resubmitted job), else start.
if compgen -G "logs/${NAME}/version_*/checkpoints/last.ckpt" > /dev/null \
   || compgen -G "logs/${NAME}/version_*/hpc_ckpt_*.ckpt" > /dev/null; then
  ARGS+=(ckpt_path=last)
fi

# Check the config once, before any GPU is taken (exits 2 with one line on a bad key or value).
python train.py "${ARGS[@]}" print_config=true > /dev/null

srun python train.py "${ARGS[@]}"
