#!/bin/bash
# One machine's launcher of a multi-machine lafs run: `srun` starts it once per node (configs/slurm/train.sbatch),
# and it starts that node's training processes with accelerate, which joins all the nodes' processes into one run.
#   srun configs/slurm/node.sh lafs/pretrain.py --config CONFIG output_dir=/shared/runs/NAME ...
# From SLURM: SLURM_NNODES, SLURM_NODEID, SLURM_JOB_NODELIST (the first node hosts the rendezvous). Optional:
# PROCESSES_PER_NODE (8), ACCELERATE_CONFIG (configs/accelerate/gpu_8.yaml: one node's shape, bf16), MAIN_PORT
# (29500), MAIN_ADDR (the first node), PYTHON (python: the project's environment, active on every node).
set -euo pipefail
: "${SLURM_NNODES:?run me under srun (or set SLURM_NNODES and SLURM_NODEID)}"
: "${SLURM_NODEID:?run me under srun (or set SLURM_NNODES and SLURM_NODEID)}"
MAIN_ADDR=${MAIN_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
PROCESSES_PER_NODE=${PROCESSES_PER_NODE:-8}
exec "${PYTHON:-python}" -m accelerate.commands.launch \
    --config_file "${ACCELERATE_CONFIG:-configs/accelerate/gpu_8.yaml}" \
    --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * PROCESSES_PER_NODE)) \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_ADDR" --main_process_port "${MAIN_PORT:-29500}" \
    "$@"
