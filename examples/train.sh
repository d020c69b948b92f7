#!/usr/bin/env bash
# dTRPO training with torchrun, Megatron-LM style: one bash array per concern.
#   bash examples/train.sh                                   # tiny model, 4 CPU ranks, TP=2 x PP=2
#   CONFIG=examples/configs/fast_dllm_v2_7b.yaml GPUS_PER_NODE=8 NNODES=2 NODE_RANK=0 \
#     MASTER_ADDR=host0 bash examples/train.sh train.train_steps=500
# Extra arguments are `section.key=value` overrides of the config.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-examples/configs/demo_tiny.yaml}
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
# Seconds torchrun gives ranks that are still saving before SIGKILL. torch 2.13.0's torchrun takes
# --shutdown-timeout; torch 2.9.1's (the NGC image's) has no such flag and waits a fixed 30 s.
if "$PYTHON" -m torch.distributed.run --help 2>/dev/null | grep -q -- --shutdown-timeout; then
    DISTRIBUTED_ARGS+=(--shutdown-timeout "${SHUTDOWN_TIMEOUT:-600}")
fi
PARALLEL_ARGS=(
    parallel.tensor_model_parallel_size="${TP:-2}"
    parallel.pipeline_model_parallel_size="${PP:-2}"
)
RUN_ARGS=(
    checkpoint.dir="${CKPT_DIR:-runs/train/checkpoints}"
    logging.dir="${LOG_DIR:-runs/train}"
)

DATA_ARGS=()
if [ "$CONFIG" = examples/configs/demo_tiny.yaml ]; then  # the tiny default trains on synthetic pairs made here
    "$PYTHON" -c "from dtrpo_mega.data.synthetic import prepare_counting_dataset; prepare_counting_dataset('runs/train/data/counting')"
    DATA_ARGS=(data.path=runs/train/data/counting scheduler.mode=inference_aligned)  # its pairs log no trajectories
fi
"$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" -m dtrpo_mega.train --config "$CONFIG" \
    "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" "${RUN_ARGS[@]}" "$@" &
LAUNCHER=$!
# SIGTERM or SIGINT to this script goes to the ranks: they finish the step, save a checkpoint and
# exit 0, so torchrun (and this script) exit 0. A signal sent to torchrun itself makes it exit 1
# after its ranks stop; --shutdown-timeout gives ranks that are saving time before SIGKILL.
forward() { pkill -TERM -P "$LAUNCHER" || true; }
trap forward TERM INT
status=0
wait "$LAUNCHER" || status=$?
while kill -0 "$LAUNCHER" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives
    status=0
    wait "$LAUNCHER" || status=$?
done
exit "$status"
