#!/bin/bash
# Multi-node training on Slurm: one `accelerate launch` per node, each starting one process per GPU.
#
# Usage (activate the environment that has alignkit first; sbatch passes your environment to the job):
#
#   sbatch --nodes 2 "$(python -c 'from alignkit.configs import config_path; print(config_path("slurm_multinode.sh"))')" \
#       -m alignkit.trainers.sft --profile gpu --run_dir runs/sft
#
# Everything after the script name is TRAIN_CMD: what `accelerate launch` runs on every rank, either
# `-m <module> <args>` or `<script.py> <args>`. Settings, all optional, read from the environment:
#
#   GPUS_PER_NODE       processes per node (default 8; match --gpus-per-node below)
#   ACCELERATE_CONFIG   a shipped accelerate config (default accelerate_multigpu.yaml), e.g.
#                       accelerate_deepspeed_zero3.yaml
#   DEEPSPEED_CONFIG    the shipped DeepSpeed JSON to pass as --deepspeed_config_file; defaults to the one that
#                       matches ACCELERATE_CONFIG (deepspeed_zero2.json / deepspeed_zero3.json)
#   MIXED_PRECISION     passed as --mixed_precision when set (DeepSpeed configs: bf16 "auto" needs it)
#   MAIN_PROCESS_PORT   rendezvous port on the first node (default 29500)
#
#   ACCELERATE_CONFIG=accelerate_deepspeed_zero3.yaml MIXED_PRECISION=bf16 sbatch --nodes 4 slurm_multinode.sh -m ...
#
# torchrun alternative (plain PyTorch, no accelerate config; the script itself builds its Accelerator): replace the
# `accelerate launch` block inside `srun bash -c '...'` below by
#
#   torchrun --nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node "$GPUS_PER_NODE" \
#       --master_addr "$MAIN_PROCESS_IP" --master_port "$MAIN_PROCESS_PORT" "$@"
#
# (torchrun takes `-m <module>` or `<script.py>` too). With torchrun, DeepSpeed is enabled from the script
# (Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config_path("deepspeed_zero3.json")))).

#SBATCH --job-name=alignkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: sbatch slurm_multinode.sh -m <module> <args>   (or <script.py> <args>); see the header" >&2
    exit 2
fi
TRAIN_CMD=("$@")

config_file() { python -c "from alignkit.configs import config_path; print(config_path('$1'))"; }

export GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-accelerate_multigpu.yaml}"
case "$ACCELERATE_CONFIG" in
    accelerate_deepspeed_zero2.yaml) DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-deepspeed_zero2.json}" ;;
    accelerate_deepspeed_zero3.yaml) DEEPSPEED_CONFIG="${DEEPSPEED_CONFIG:-deepspeed_zero3.json}" ;;
esac
export ACCELERATE_CONFIG_FILE; ACCELERATE_CONFIG_FILE="$(config_file "$ACCELERATE_CONFIG")"
export DEEPSPEED_CONFIG_FILE=""
if [[ -n "${DEEPSPEED_CONFIG:-}" ]]; then DEEPSPEED_CONFIG_FILE="$(config_file "$DEEPSPEED_CONFIG")"; fi
export MIXED_PRECISION="${MIXED_PRECISION:-}"
# The first node of the allocation hosts the rendezvous; every node must reach it on MAIN_PROCESS_PORT.
# (Read the whole list: `... | head -n 1` can kill scontrol with SIGPIPE, which pipefail turns into a failure.)
readarray -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
export MAIN_PROCESS_IP="${NODES[0]:?scontrol returned no hosts for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST}"
export MAIN_PROCESS_PORT="${MAIN_PROCESS_PORT:-29500}"

echo "nodes=$SLURM_NNODES gpus/node=$GPUS_PER_NODE main=$MAIN_PROCESS_IP:$MAIN_PROCESS_PORT" \
     "config=$ACCELERATE_CONFIG_FILE deepspeed=${DEEPSPEED_CONFIG_FILE:-none} cmd=${TRAIN_CMD[*]}"

# One task per node. The single quotes matter: $SLURM_NODEID must be expanded inside each task (0, 1, ...),
# not here in the batch step, where it is always 0. TRAIN_CMD travels as "$@" of `bash -c`.
srun --nodes "$SLURM_NNODES" --ntasks-per-node 1 bash -c '
    accelerate launch \
        --config_file "$ACCELERATE_CONFIG_FILE" \
        ${DEEPSPEED_CONFIG_FILE:+--deepspeed_config_file "$DEEPSPEED_CONFIG_FILE"} \
        ${MIXED_PRECISION:+--mixed_precision "$MIXED_PRECISION"} \
        --num_machines "$SLURM_NNODES" \
        --machine_rank "$SLURM_NODEID" \
        --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))" \
        --main_process_ip "$MAIN_PROCESS_IP" \
        --main_process_port "$MAIN_PROCESS_PORT" \
        "$@"
' accelerate-launch "${TRAIN_CMD[@]}"
