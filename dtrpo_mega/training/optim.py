"""Optimizer, learning-rate schedule and gradient clipping.

CPU ranks: torch AdamW on this rank's parameters, with the gradient reductions of
`dtrpo_mega.parallel.grads` and a global-norm clip that counts every parameter once (TP
duplicates and the tied output weight excluded). megatron-core's optimizers check for
`torch.cuda.*Tensor` types and cannot run on CPU.
GPU ranks: megatron-core DistributedDataParallel + its distributed optimizer (bf16 master
weights in fp32), the schedule finalizing gradients through `finalize_model_grads`.
Either way, gradients end up as d(sum of pair losses)/d(theta) / (pairs in the global batch).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

from dtrpo_mega.config import OptimizerSection
from dtrpo_mega.parallel.grads import finalize_grads, is_expert_param


def lr_at(step: int, cfg: OptimizerSection, total_steps: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _decays(name: str, param) -> bool:
    """Megatron's rule: no weight decay on biases and 1-D (norm) parameters."""
    return param.dim() > 1 and not name.endswith(".bias")


def global_grad_norm(model) -> torch.Tensor:
    """L2 norm of the full model's gradient, every parameter counted once: dense ones over TP x PP,
    routed experts over expert-TP x EP x PP."""
    groups = model.pg_collection
    squares = {False: torch.zeros((), dtype=torch.float64), True: torch.zeros((), dtype=torch.float64)}
    for name, param in model.named_parameters():
        expert = is_expert_param(name)
        duplicate = not param_is_not_tensor_parallel_duplicate(param, groups.expt_tp if expert else groups.tp)
        if param.grad is None or getattr(param, "shared", False) or duplicate:
            continue
        squares[expert] += param.grad.double().pow(2).sum()
    dist.all_reduce(squares[False], group=groups.mp)
    dist.all_reduce(squares[True], group=groups.tp_ep_pp)
    return (squares[False] + squares[True]).sqrt()


class CpuOptimizer:
    """AdamW with explicit gradient finalization and clipping (CPU ranks)."""

    def __init__(self, model, cfg: OptimizerSection):
        self.model, self.module, self.cfg = model, model, cfg
        decay = [p for n, p in model.named_parameters() if p.requires_grad and _decays(n, p)]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not _decays(n, p)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
        )

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, total_pairs: int, lr: float) -> float:
        finalize_grads(self.model, num_units=total_pairs)
        norm = global_grad_norm(self.model)
        if self.cfg.clip_grad > 0 and norm > self.cfg.clip_grad:
            scale = self.cfg.clip_grad / (float(norm) + 1e-6)
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.mul_(scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return float(norm)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class MegatronOptimizer:
    """megatron-core DDP + distributed optimizer (GPU ranks)."""

    def __init__(self, model, cfg: OptimizerSection, bf16: bool):
        from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                               finalize_model_grads)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.model = model
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                            use_distributed_optimizer=True)
        groups = model.pg_collection
        self.module = DistributedDataParallel(config=model.config, ddp_config=ddp, module=model, pg_collection=groups)
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
                adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps,
                clip_grad=cfg.clip_grad, bf16=bf16, params_dtype=model.config.params_dtype,
                use_distributed_optimizer=True,
            ),
            [self.module],
            use_gloo_process_groups=False,  # refused with a pg_collection; only dp_zero optimizer formats use them
            pg_collection=groups,
        )
        model.config.finalize_model_grads_func = finalize_model_grads
        model.config.grad_scale_func = self.optimizer.scale_loss
        model.config.no_sync_func = self.module.no_sync

    def zero_grad(self) -> None:
        self.module.zero_grad_buffer()
        self.optimizer.zero_grad()

    def step(self, total_pairs: int, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise FloatingPointError("optimizer step skipped: non-finite gradients")
        return float(grad_norm)

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict:
        return self.optimizer.sharded_state_dict(model_sharded, is_loading=is_loading)


def build_optimizer(model, cfg: OptimizerSection, bf16: bool):
    if torch.cuda.is_available():
        return MegatronOptimizer(model, cfg, bf16)
    return CpuOptimizer(model, cfg)
