"""Activation recomputation on CPU ranks: selective and full reproduce no recompute's log-probs and
every local gradient shard, through megatron-core's pipeline schedule.

Usage: torchrun --nproc-per-node 4 recompute_parity.py
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from megatron.core import parallel_state

from dtrpo_mega.diffusion.mask import TokenLayout, block_diffusion_sample, collate
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity, RecomputeMethod
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.training.step import forward_backward

LAYOUTS = [(2, 2), (1, 2)]  # (TP, PP); 2 layers per stage
RECOMPUTES = [
    RecomputeConfig(RecomputeGranularity.SELECTIVE),
    RecomputeConfig(RecomputeGranularity.FULL, RecomputeMethod.UNIFORM, 1),
    RecomputeConfig(RecomputeGranularity.FULL, RecomputeMethod.UNIFORM, 2),
    RecomputeConfig(RecomputeGranularity.FULL, RecomputeMethod.BLOCK, 1),
]


@dataclass
class Inputs:
    tokens: Tensor
    layout: TokenLayout
    labels: Tensor
    scored: Tensor

    def to(self, device) -> "Inputs":
        return Inputs(self.tokens.to(device), self.layout.to(device), self.labels.to(device), self.scored.to(device))


def micro_batches(cfg) -> list[Inputs]:
    g = torch.Generator().manual_seed(11)
    batches = []
    for lengths in ([(40, 7), (29, 12)], [(35, 9), (22, 4)]):
        samples = []
        for n, prompt in lengths:
            clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
            noisy = torch.where((torch.arange(n) >= prompt) & (torch.rand(n, generator=g) < 0.5), cfg.mask_token_id,
                                clean)
            samples.append(block_diffusion_sample(noisy, clean, prompt, cfg.block_size))
        tokens, layout = collate(samples, cfg.attention, cfg.block_size, pad_id=0)
        labels = torch.randint(0, cfg.vocab_size, tokens.shape, generator=g)
        batches.append(Inputs(tokens, layout, labels, layout.segments > 0))
    return batches


def loss_func(mb: Inputs, token_ce: Tensor):
    scored = mb.scored.float()
    return (token_ce * scored).sum(), scored.sum().int(), {"logps": (-token_ce * scored).detach()}


def step(model):
    """Log-probs, gradients, and how many times the core attentions ran (recomputation reruns them)."""
    calls = []
    for layer in model.decoder.layers:
        layer.self_attention.core_attention.register_forward_pre_hook(lambda *_: calls.append(1))
    reports = forward_backward(model, micro_batches(model.dllm_config), loss_func)
    finalize_grads(model)
    return [r["logps"] for r in reports], {name: p.grad for name, p in model.named_parameters()}, len(calls)


def main():
    cfg = model_config("fast_dllm_v2", num_layers=4)
    for tp, pp in LAYOUTS:
        initialize(ParallelConfig(tp, pp), seed=5)
        reference = build_model(cfg)
        ref_logps, ref_grads, ref_calls = step(reference)
        for recompute in RECOMPUTES:
            model = build_model(cfg, recompute=recompute)
            model.load_state_dict(reference.state_dict())
            logps, grads, calls = step(model)
            tag = f"TP={tp} PP={pp} {recompute}"
            assert calls > ref_calls, f"{tag}: nothing was recomputed"
            assert len(logps) == len(ref_logps) == (2 if parallel_state.is_pipeline_last_stage() else 0), tag
            for got, want in zip(logps, ref_logps):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=0, msg=tag)
            assert grads.keys() == ref_grads.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-9, msg=f"{tag} {name}")
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"RECOMPUTE OK TP={tp} PP={pp} settings={len(RECOMPUTES)}", flush=True)


if __name__ == "__main__":
    main()
