"""Context- and expert-parallel parity on 4 CPU ranks: CP and EP layouts reproduce TP=1/PP=1/CP=1/EP=1.

Usage: torchrun --nproc-per-node 4 cp_parity.py FAMILY WORK_DIR

A dense family runs the CP layouts; a mixture-of-experts family the EP layouts, each beside DP,
TP (with sequence parallelism), PP or CP, dropless.

First the CP collectives are checked against their definitions. Then the TP=1/PP=1/CP=1
reference (DP=4) saves its weights and finalized gradients; every CP layout loads the weights,
runs the same rows split over its CP ranks, and compares its log-probs at its own tokens and every
gradient after `finalize_grads`. DP ranks score different rows, so the DP x CP reduction is
checked too. The loss is nonlinear in each row's log-prob sum, which is summed over CP ranks with
`all_reduce_sum_keep_grad` first, as the dTRPO loss is.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.core import parallel_state

from common import Batch, assert_grads_match, load_weights, save_grads, save_weights

from dtrpo_mega.diffusion.mask import block_diffusion_sample, collate, plain_sample
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.parallel.context import all_reduce_sum_keep_grad, gather_sequence, shard_layout, shard_tokens
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.training.step import forward_backward

LAYOUTS = [(1, 1, 2, 1), (1, 1, 4, 1), (2, 1, 2, 1), (1, 2, 2, 1)]  # (TP, PP, CP, EP); CP=2 alone is CP2 x DP2
MOE_LAYOUTS = [(1, 1, 1, 2), (2, 1, 1, 2), (1, 2, 1, 2), (1, 1, 2, 2)]  # EP2 x DP2, x TP2, x PP2, x CP2
ROWS = [  # per data set, per micro-batch: (sequence length, prompt length) of each row
    [[(14, 3), (11, 6)], [(17, 9), (9, 2)]],
    [[(12, 5), (15, 1)], [(10, 4), (13, 7)]],
]


def shard(batch: Batch, cp_rank: int, cp_size: int) -> Batch:
    """This CP rank's part of a micro-batch: its tokens, labels and scored flags, and its layout view."""
    t = lambda x: shard_tokens(x, cp_rank, cp_size)  # noqa: E731
    return Batch(t(batch.tokens), shard_layout(batch.layout, cp_rank, cp_size), t(batch.labels), t(batch.scored))


def data_set(cfg, index: int) -> list[Batch]:
    """Micro-batches of rows padded to a multiple of 8 (= 2 x the largest CP), padding inside."""
    g = torch.Generator().manual_seed(11 + index)
    batches = []
    for lengths in ROWS[index]:
        samples = []
        for n, prompt in lengths:
            clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
            noisy = torch.where((torch.arange(n) >= prompt) & (torch.rand(n, generator=g) < 0.5), cfg.mask_token_id,
                                clean)
            block = cfg.attention.value == "block_diffusion"
            samples.append(block_diffusion_sample(noisy, clean, prompt, cfg.block_size) if block
                           else plain_sample(noisy))
        tokens, layout = collate(samples, cfg.attention, cfg.block_size, pad_id=0, pad_to_multiple=8)
        labels = torch.randint(0, cfg.vocab_size, tokens.shape, generator=g)
        scored = (layout.segments > 0) & (torch.rand(tokens.shape, generator=g) < 0.7)
        batches.append(Batch(tokens, layout, labels, scored))
    return batches


def loss_func(batch: Batch, token_ce: torch.Tensor):
    logps = -token_ce * batch.scored
    row_sums = all_reduce_sum_keep_grad(logps.sum(dim=1), parallel_state.get_context_parallel_group())
    loss = -F.logsigmoid(0.05 * row_sums + 1.0).sum()
    return loss, batch.scored.sum().int(), {"logps": logps.detach()}


def run(cfg, tp, pp, cp, ep=1):
    initialize(ParallelConfig(tp, pp, cp, expert_model_parallel_size=ep), seed=5)
    model = build_model(cfg)
    model.config.calculate_per_token_loss = True  # the schedule leaves the summed losses alone
    return model


def step(model, sets: list[list[Batch]], num_units: int, forward_only: bool = False) -> list[torch.Tensor]:
    """Log-probs of every micro-batch (last stage), gradients finalized over DP x CP."""
    cp_rank, cp = parallel_state.get_context_parallel_rank(), parallel_state.get_context_parallel_world_size()
    batches = [shard(batch, cp_rank, cp) for batch in sum(sets, [])]
    model.zero_grad()
    reports = forward_backward(model, batches, loss_func, forward_only=forward_only)
    if not forward_only:
        finalize_grads(model, num_units)
    return [r["logps"] for r in reports]


def my_sets(data: list[list[Batch]]) -> tuple[list[int], int]:
    """The data sets of this DP rank, and how many DP ranks score each (the gradient divisor)."""
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    if dp == 1:
        return list(range(len(data))), 1
    return [dp_rank % len(data)], dp // len(data)


def check_collectives() -> None:
    """gather_sequence and all_reduce_sum_keep_grad against their definitions on a CP group of 4."""
    initialize(ParallelConfig(1, 1, 4), seed=5)
    group, rank = parallel_state.get_context_parallel_group(), parallel_state.get_context_parallel_rank()
    part = lambda r: torch.arange(6.0).reshape(3, 2) + 10 * r  # noqa: E731
    weight = lambda r: torch.linspace(-1, 1, 24).reshape(12, 2) * (r + 1)  # noqa: E731
    x = part(rank).requires_grad_()
    y = gather_sequence(x, group)
    torch.testing.assert_close(y, torch.cat([part(r) for r in range(4)]))
    (y * weight(rank)).sum().backward()
    torch.testing.assert_close(x.grad, sum(weight(r) for r in range(4))[3 * rank:3 * rank + 3])

    x = part(rank).requires_grad_()
    total = all_reduce_sum_keep_grad(x, group)
    torch.testing.assert_close(total, sum(part(r) for r in range(4)))
    (total**2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * total.detach())
    if dist.get_rank() == 0:
        print("CP COLLECTIVES OK", flush=True)


def main():
    family, work = sys.argv[1], Path(sys.argv[2])
    check_collectives()
    cfg = model_config(family, num_layers=4, tie_embeddings=family == "sdar")
    data = [data_set(cfg, i) for i in range(len(ROWS))]

    model = run(cfg, 1, 1, 1)
    if cfg.moe is not None:
        assert any(".mlp.experts." in name for name, _ in model.named_parameters())
    reference_logps = [step(model, [batches], 1, forward_only=True) for batches in data]
    sets, num_units = my_sets(data)
    step(model, [data[i] for i in sets], num_units)
    save_weights(model, work / "weights")
    save_grads(model, work / "grads")

    for tp, pp, cp, ep in MOE_LAYOUTS if cfg.moe is not None else LAYOUTS:
        model = run(cfg, tp, pp, cp, ep)
        load_weights(model, work / "weights")
        sets, num_units = my_sets(data)
        logps = step(model, [data[i] for i in sets], num_units)
        if parallel_state.is_pipeline_last_stage():
            expected = sum((reference_logps[i] for i in sets), [])
            assert len(logps) == len(expected)
            for got, ref in zip(logps, expected):
                ref = shard_tokens(ref, parallel_state.get_context_parallel_rank(), cp)
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        reference_grads = run(cfg, tp, pp, cp, ep)
        load_weights(reference_grads, work / "grads")
        checked = assert_grads_match(model, reference_grads, f"TP={tp} PP={pp} CP={cp} EP={ep}")
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"CP PARITY OK family={family} TP={tp} PP={pp} CP={cp} EP={ep} params_checked_rank0={checked}",
                  flush=True)


if __name__ == "__main__":
    main()
