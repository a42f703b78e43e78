#!/bin/bash
# metadino on several nodes under SLURM: one torchrun per node, FSDP2 over all GPUs of all nodes.
#
#   sbatch examples/slurm_fsdp.sh configs/microscopy.yaml runs/hpa-vitl data.table=/data/hpa/meta.csv
#
# torchrun's c10d rendezvous on the first node of the allocation joins the nodes; each node starts one process per
# GPU. A preempted or timed-out job leaves a checkpoint (SIGTERM is caught): resubmitting the same command continues
# it (the run directory knows its config; `--resume` is added when a checkpoint exists). A sharded checkpoint also
# continues on another number of nodes (same global batch: set train.batch_size to global / (nodes x GPUs)).
#SBATCH --job-name=metadino
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm_fsdp.sh CONFIG RUN_DIR [key=value ...]}
RUN_DIR=${2:?usage: sbatch slurm_fsdp.sh CONFIG RUN_DIR [key=value ...]}
shift 2

HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RESUME=()
if [ -f "$RUN_DIR/checkpoints/latest" ]; then
  RESUME=(--resume)
fi

srun --kill-on-bad-exit=1 torchrun \
  --nnodes="$SLURM_JOB_NUM_NODES" \
  --nproc_per_node="$SLURM_GPUS_PER_NODE" \
  --rdzv_id="$SLURM_JOB_ID" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$HEAD_NODE:29500" \
  -m metadino train "$CONFIG" train.parallel=fsdp train.precision=bf16 "$@" --out "$RUN_DIR" "${RESUME[@]}"
