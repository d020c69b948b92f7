"""The training loop: dTRPO and its peers, or masked-diffusion SFT (`objective.name=sft`).

Per step: the step's pairs -> rows (re-masked `[z~ ; y0]`) -> reference sums (not for SFT) ->
policy forward and backward through megatron-core's pipeline schedule with the loss in the last
stage -> gradient finalization, clipping and the optimizer step -> metrics -> (maybe) a
checkpoint. SIGTERM finishes the current step, saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import time
from functools import partial

import torch
import torch.distributed as dist

from dtrpo_mega.config import TrainConfig
from dtrpo_mega.diffusion.spec import SFTNormalizer
from dtrpo_mega.losses.preference import NLLNormalization
from dtrpo_mega.parallel.runtime import comm_device
from dtrpo_mega.rows import ScoredRows
from dtrpo_mega.checkpoint.trainer import CheckpointLock, latest_checkpoint, load_checkpoint, save_checkpoint
from dtrpo_mega.training.metrics import MetricsLogger, reduce_reports
from dtrpo_mega.training.moe import RouterMonitor
from dtrpo_mega.training.optim import build_optimizer, lr_at
from dtrpo_mega.training.objectives import policy_loss, sequences_per_unit, sft_loss
from dtrpo_mega.training.setup import Run, build_policy, build_reference, reference_weights_id, setup_run
from dtrpo_mega.training.step import forward_backward


class StopFlag:
    """Set by SIGTERM on any rank; every rank agrees on it at the end of each step. The previous
    handler comes back with `restore()`, so a process that trains in-process stays killable."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        flag = torch.tensor(int(self.requested), device=comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def micro_batches_of(run: Run, step: int) -> list[ScoredRows]:
    """This rank's micro-batches of the step: its data-parallel share of the pairs, packed into rows
    of `train.micro_batch_tokens` or `train.micro_batch_size` pairs each, then its context-parallel
    share of every row."""
    epoch, cfg, rt = run.order.epoch_of(step), run.cfg.train, run.runtime
    pairs = lambda idx: [run.dataset[int(i)] for i in idx]  # noqa: E731
    if run.cfg.data.packing:
        share = run.order.local_pairs(step, rt.dp_rank, rt.dp)
        micro = run.rows.packed_micro_batches(pairs(share), epoch, cfg.micro_batch_tokens)
    else:
        groups = run.order.local_micro_batches(step, rt.dp_rank, rt.dp, cfg.micro_batch_size)
        micro = [run.rows.micro_batch(pairs(idx), epoch) for idx in groups]
    return run.context_shards(micro)


def step_loss(run: Run, micro: list[ScoredRows]):
    """The loss function of one step's micro-batches, with its global-batch normalizers."""
    cfg, groups = run.cfg, run.runtime.pg_collection
    if cfg.objective.name.is_preference:
        batch_nll = cfg.loss.nll_weight and cfg.loss.nll_normalization == NLLNormalization.BATCH_TOKENS
        per_token = sequences_per_unit(micro, SFTNormalizer.RESPONSE_TOKENS, groups) if batch_nll else None
        return partial(policy_loss, cfg.loss, per_token, groups.cp)
    per_sequence = run.rows.sft.normalizer == SFTNormalizer.SEQUENCE_LENGTH
    per_unit = None if per_sequence else sequences_per_unit(micro, run.rows.sft.normalizer, groups)
    return partial(sft_loss, run.rows.sft, per_unit, groups.cp)


def train(cfg: TrainConfig) -> list[dict]:
    """Train; returns the logged metrics (on the logging rank; empty elsewhere)."""
    run = setup_run(cfg)
    if run.runtime.rank == 0:
        counts = run.dataset.metadata["counts"]
        print(f"data {cfg.data.path}: {len(run.dataset)} pairs ({counts['read']} read at preprocessing, "
              f"{counts['truncated']} truncated, {counts['dropped']} dropped by the over-long rule), fingerprint "
              f"{run.dataset.fingerprint[:12]}; {run.order.steps_per_epoch} steps per epoch", flush=True)
    policy = build_policy(run)
    preference = cfg.objective.name.is_preference
    reference = build_reference(run, policy) if preference else None
    optimizer = build_optimizer(policy, cfg.optimizer, bf16=run.dtype == torch.bfloat16)
    reference_id = reference_weights_id(run) if preference else None
    lock = CheckpointLock(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
    if lock is not None:
        lock.acquire()
    try:
        history = _train_steps(run, policy, reference, optimizer, reference_id)
    finally:
        if lock is not None:
            lock.release()
    return history


def _train_steps(run: Run, policy, reference, optimizer, reference_id: str | None) -> list[dict]:
    """Resume from the latest checkpoint, if any, and train to `train.train_steps`."""
    cfg, start, ckpt_root = run.cfg, 0, run.cfg.checkpoint.dir
    if ckpt_root and cfg.checkpoint.resume and (path := latest_checkpoint(ckpt_root)) is not None:
        resumed = load_checkpoint(path, policy, optimizer, reference_id, verify=cfg.checkpoint.verify)
        start = resumed.step
        if run.runtime.rank == 0:
            note = ("" if resumed.optimizer_restored
                    else " (different parallel layout: weights resharded, optimizer state reset)")
            print(f"resumed from {path} at step {start}{note}", flush=True)

    if start >= cfg.train.train_steps and run.runtime.rank == 0:
        print(f"nothing to train: the checkpoint is at step {start}, train.train_steps={cfg.train.train_steps}",
              flush=True)
    logs_here = run.runtime.rank == run.runtime.world_size - 1
    logger = MetricsLogger(cfg.logging.dir, cfg.train.train_steps, start, cfg.to_dict(), cfg.logging.wandb_project,
                           cfg.logging.progress_bar, cfg.logging.log_interval) if logs_here else None
    stop = StopFlag()
    routers = RouterMonitor(policy, run.runtime.dp) if run.model_config.moe is not None else None
    try:
        for step in range(start, cfg.train.train_steps):
            t0 = time.perf_counter()
            micro = micro_batches_of(run, step)
            if reference is not None:
                micro = reference.with_reference(micro)
            optimizer.zero_grad()
            with routers.step(len(micro), cfg.train.global_batch_size) if routers else contextlib.nullcontext():
                reports = forward_backward(optimizer.module, micro, step_loss(run, micro))
            lr = lr_at(step, cfg.optimizer, cfg.train.train_steps)
            grad_norm = optimizer.step(cfg.train.global_batch_size, lr)
            elapsed = time.perf_counter() - t0
            router_metrics = routers.metrics() if routers else {}
            if run.runtime.is_last_stage:
                metrics = reduce_reports(reports, run.runtime.pg_collection.dp)
                sizes = torch.tensor([[mb.layout.positions.numel(), mb.padding_tokens(), mb.num_samples()]
                                      for mb in micro], dtype=torch.float64, device=comm_device()).sum(0)
                dist.all_reduce(sizes, group=run.runtime.pg_collection.dp)
                tokens, padding, rows = sizes.tolist()
                metrics.update(grad_norm=grad_norm, lr=lr, pairs_per_s=cfg.train.global_batch_size / elapsed,
                               tokens_per_s=tokens / elapsed, rows_per_pair=rows / cfg.train.global_batch_size,
                               padding_fraction=padding / tokens, step_s=elapsed, **router_metrics)
                if logger is not None:
                    logger.log(step + 1, metrics)
            interrupted = stop.agreed()
            interval = cfg.checkpoint.save_interval
            last = step + 1 == cfg.train.train_steps
            if ckpt_root and (interrupted or last or (interval and (step + 1) % interval == 0)):
                save_checkpoint(ckpt_root, step + 1, policy, optimizer, cfg.to_dict(), reference_id)
            if interrupted:
                if run.runtime.rank == 0:
                    print(f"SIGTERM: saved a checkpoint at step {step + 1} and stopped", flush=True)
                break
    finally:
        stop.restore()
    if logger is not None:
        png = logger.close()
        print(f"metrics: {logger.run_dir / 'metrics.jsonl'}; reward curves: {png}", flush=True)
        return logger.history
    return []
