"""Foundation demo: a tiny block-diffusion dLLM, forward and backward at TP=2 x PP=2 on CPU ranks.

    torchrun --nproc-per-node 4 tools/demo.py [--family fast_dllm_v2] [--steps 8]

Builds one `[z~ ; y0]` batch per step (random prompts and answers, answer tokens re-masked at
random), runs it through megatron-core's pipeline schedule with the loss in the last stage
(masked-token cross-entropy on the noisy half, the masked-diffusion SFT objective), reduces the
gradients and takes an AdamW step. It prints the layout, each rank's share of the model and the
loss per step.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from megatron.core import parallel_state

from dtrpo_mega.diffusion.mask import MaskVariant, block_diffusion_sample, collate, plain_sample
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize, shutdown
from dtrpo_mega.training.step import MicroBatch, forward_backward


def make_batch(cfg, step: int, batch_size: int, length: int) -> MicroBatch:
    """A pure function of the step, so every rank builds the same batch."""
    g = torch.Generator().manual_seed(step)
    samples, targets = [], []
    for _ in range(batch_size):
        prompt_len = int(torch.randint(2, length // 2, (), generator=g))
        # A learnable toy language: counting upwards (mod 64) from a random start.
        clean = (torch.randint(0, 64, (), generator=g) + torch.arange(length)) % 64
        masked = (torch.arange(length) >= prompt_len) & (torch.rand(length, generator=g) < 0.5)
        noisy = torch.where(masked, cfg.mask_token_id, clean)
        if cfg.attention == MaskVariant.BLOCK_DIFFUSION:
            samples.append(block_diffusion_sample(noisy, clean, prompt_len, cfg.block_size))
            start = (prompt_len // cfg.block_size) * cfg.block_size
            scored = torch.cat([masked[start:], torch.zeros(length, dtype=torch.bool)])
            target = torch.cat([clean[start:], clean])
        else:
            samples.append(plain_sample(noisy))
            scored, target = masked, clean
        targets.append((target, scored))
    tokens, layout = collate(samples, cfg.attention, cfg.block_size, pad_id=0)
    labels = torch.zeros_like(tokens)
    scored = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (target, mask) in enumerate(targets):
        labels[i, : target.numel()], scored[i, : mask.numel()] = target, mask
    return MicroBatch(tokens, layout, labels, {"scored": scored})


def masked_token_loss(mb: MicroBatch, token_ce: torch.Tensor):
    scored = mb.extra["scored"].float()
    count = scored.sum()
    loss_sum = (token_ce * scored).sum()
    # clone: the schedule divides the returned loss in place
    return loss_sum, count.int(), {"loss_sum": loss_sum.detach().clone(), "tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="fast_dllm_v2")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    args = parser.parse_args()

    torch.set_num_threads(1)
    rt = initialize(ParallelConfig(args.tp, args.pp), seed=1234)
    cfg = model_config(args.family)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    local = sum(p.numel() for p in model.parameters())
    shares = [None] * rt.world_size
    dist.all_gather_object(shares, (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank(), local))
    if rt.rank == 0:
        print(f"dtrpo_mega demo: {cfg.family} (tiny) on {rt.world_size} CPU ranks, TP={rt.tp} PP={rt.pp} DP={rt.dp}, "
              f"attention={model.decoder.layers[0].self_attention.core_attention.backend.value}, mask={cfg.attention.value}, "
              f"block={cfg.block_size}, vocab={cfg.vocab_size} (padded {cfg.padded_vocab(rt.tp)})")
        for rank, (tp_rank, pp_rank, n) in enumerate(shares):
            print(f"  rank {rank}: TP rank {tp_rank}, PP stage {pp_rank}, {n:,} parameters")

    for step in range(args.steps):
        start = time.perf_counter()
        batches = [make_batch(cfg, step * args.micro_batches + i, args.batch_size, args.length) for i in range(args.micro_batches)]
        optimizer.zero_grad()
        reports = forward_backward(model, batches, masked_token_loss)
        finalize_grads(model)
        optimizer.step()
        if rt.is_last_stage and parallel_state.get_tensor_model_parallel_rank() == 0:
            loss = sum(r["loss_sum"] for r in reports) / sum(r["tokens"] for r in reports)
            tokens = sum(b.tokens.numel() for b in batches)
            print(f"step {step + 1}/{args.steps}  masked-token loss {loss.item():.4f}  "
                  f"({tokens} tokens of [z~ ; y0], {time.perf_counter() - start:.2f} s)", flush=True)
    dist.barrier()
    if rt.rank == 0:
        print("demo done: forward and backward ran through megatron-core's pipeline schedule on every rank")
    shutdown()


if __name__ == "__main__":
    main()
