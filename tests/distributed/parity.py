"""TP/PP parity on CPU ranks: every layout reproduces TP=1/PP=1's per-token log-probs and gradients.

Usage: torchrun --nproc-per-node 4 parity.py FAMILY WORK_DIR [tied|untied]

The TP=1/PP=1 reference weights and gradients are saved as megatron dist checkpoints; each other
layout loads the weights resharded, runs the same micro-batches through the pipeline schedule,
and compares its last-stage log-probs and every local gradient shard with the reference
gradients loaded into the same layout.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron.core import parallel_state

from common import Batch, assert_grads_match, load_weights, save_grads, save_weights

from dtrpo_mega.diffusion.mask import block_diffusion_sample, collate, plain_sample
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.training.step import forward_backward

LAYOUTS = [(2, 1), (1, 2), (2, 2)]


def micro_batches(cfg) -> list[Batch]:
    g = torch.Generator().manual_seed(11)
    batches = []
    for lengths in ([(14, 3), (11, 6)], [(17, 9), (9, 2)]):
        samples, labels, scored = [], [], []
        for n, prompt in lengths:
            clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
            noisy = torch.where((torch.arange(n) >= prompt) & (torch.rand(n, generator=g) < 0.5), cfg.mask_token_id, clean)
            if cfg.attention.value == "block_diffusion":
                sample = block_diffusion_sample(noisy, clean, prompt, cfg.block_size)
            else:
                sample = plain_sample(noisy)
            samples.append(sample)
        tokens, layout = collate(samples, cfg.attention, cfg.block_size, pad_id=0)
        labels = torch.randint(0, cfg.vocab_size, tokens.shape, generator=g)
        scored = (layout.segments > 0) & (torch.rand(tokens.shape, generator=g) < 0.7)
        batches.append(Batch(tokens, layout, labels, scored))
    return batches


def loss_func(mb: Batch, token_ce: torch.Tensor):
    scored = mb.scored.float()
    loss_sum = (token_ce * scored).sum()
    return loss_sum, scored.sum().int(), {"logps": (-token_ce * scored).detach()}


def run(cfg, tp, pp):
    initialize(ParallelConfig(tp, pp), seed=5)
    return build_model(cfg)


def step(model):
    model.zero_grad()
    reports = forward_backward(model, micro_batches(model.dllm_config), loss_func)
    finalize_grads(model)
    return [r["logps"] for r in reports]


def main():
    family, work, tying = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    cfg = model_config(family, tie_embeddings=tying == "tied", num_layers=4)
    model = run(cfg, 1, 1)
    reference_logps = step(model)
    save_weights(model, work / "weights")
    save_grads(model, work / "grads")
    assert all(r.abs().sum() > 0 for r in reference_logps)

    for tp, pp in LAYOUTS:
        model = run(cfg, tp, pp)
        load_weights(model, work / "weights")
        logps = step(model)
        if parallel_state.is_pipeline_last_stage():
            assert len(logps) == len(reference_logps)
            for got, ref in zip(logps, reference_logps):
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        reference_grads = run(cfg, tp, pp)
        load_weights(reference_grads, work / "grads")
        checked = assert_grads_match(model, reference_grads, f"TP={tp} PP={pp}")
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"PARITY OK family={family} {tying} TP={tp} PP={pp} params_checked_rank0={checked}", flush=True)


if __name__ == "__main__":
    main()
