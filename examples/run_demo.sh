#!/usr/bin/env bash
# Launch the foundation demo with torchrun, Megatron-LM style: one bash array per concern.
# Usage: bash examples/run_demo.sh            (4 CPU ranks here; 4 GPUs where CUDA is present)
#        NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 GPUS_PER_NODE=8 TP=4 PP=2 bash examples/run_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GPUS_PER_NODE=${GPUS_PER_NODE:-4}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}

DISTRIBUTED_ARGS=(
    --nproc-per-node "$GPUS_PER_NODE"
    --nnodes "$NNODES"
    --node-rank "$NODE_RANK"
    --master-addr "$MASTER_ADDR"
    --master-port "$MASTER_PORT"
)
MODEL_ARGS=(
    --family "${FAMILY:-fast_dllm_v2}"
)
PARALLEL_ARGS=(
    --tp "${TP:-2}"
    --pp "${PP:-2}"
)
TRAINING_ARGS=(
    --steps "${STEPS:-20}"
    --micro-batches 2
    --batch-size 4
    --length 32
)

exec "$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" tools/demo.py \
    "${MODEL_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${TRAINING_ARGS[@]}"
