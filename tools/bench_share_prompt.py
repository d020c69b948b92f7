"""Shared-prompt rows against separate rows (`data.share_prompt`), on preference-like length mixes.

    python tools/bench_share_prompt.py [--mixes chat equal multi_turn --pairs 32 ...] [--out FILE.json]

Synthetic pairs with log-normal lengths (`bench_common.preference_like_pairs`; responses median
260 tokens, long-tailed, chosen and rejected drawn apart) under three prompt regimes, all scaled
by `--scale` to a CPU-sized model: `chat` (prompts median 160: single-turn preference sets),
`equal` (prompts median 260: as long as the answers, as in instruction-following and reasoning
sets) and `multi_turn` (prompts median 780: a conversation history three times the answer). The block
(default 8, sub-block 2) is Fast-dLLM v2's 32 scaled with the lengths, so a prompt shares the same
fraction of whole blocks as at full length.
Each mix runs as one global batch four ways: separate and shared rows, unpacked
(`--micro-batch-size` pairs per micro-batch) and packed (whole pairs in rows of `--row-tokens`,
the same budget for both). A step is a reference forward plus a policy forward and backward of
every micro-batch, with the summed per-token log-probability as the loss. Reported: tokens
(padding included) and real tokens, the (query, key) pairs the mask allows (`perf.flops`), model
FLOPs of the step, activations kept for the backward (`perf.activations`: the largest micro-batch
and the whole step) and step time (median of `--repeats` after a warm-up); "x" columns are
separate over shared of the same packing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_common import add_backbone_options, backbone_config, host, preference_like_pairs, write_results

PROMPT_MEDIANS = {"chat": 160, "equal": 260, "multi_turn": 780}  # tokens before --scale; responses: 260


def build_variants(cfg, pairs, micro_batch_size: int, row_tokens: int):
    """(packing, sharing) -> micro-batches of the same pairs; the packed budget is shared by both layouts."""
    from dtrpo_mega.diffusion.scoring import Objective
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig
    from dtrpo_mega.rows import RowBuilder

    builders = {share: RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0, share_prompt=share)
                for share in (False, True)}
    longest = max(len(builders[False].pair_rows(p, 0)) for p in pairs)
    budget = row_tokens or -(-longest // 64) * 64
    variants = {("unpacked", share): [b.micro_batch(pairs[i: i + micro_batch_size], 0)
                                      for i in range(0, len(pairs), micro_batch_size)] for share, b in builders.items()}
    variants |= {("packed", share): b.packed_micro_batches(pairs, 0, budget) for share, b in builders.items()}
    return variants, budget  # separate before shared within each packing


def measure(cfg, policy, reference, micro, repeats: int) -> dict:
    """What one step over `micro` processes, keeps for the backward and takes."""
    from dtrpo_mega.perf.activations import SavedActivations
    from dtrpo_mega.perf.flops import allowed_pairs, forward_flops

    def step(saved_bytes: list[int] | None = None):
        for mb in micro:
            with torch.no_grad():
                reference(mb.tokens, mb.layout, labels=mb.labels)
            with SavedActivations(policy) as saved:
                loss = policy(mb.tokens, mb.layout, labels=mb.labels).sum()
            if saved_bytes is not None:
                saved_bytes.append(saved.bytes)
            loss.backward()

    saved: list[int] = []
    step(saved)  # warm-up, and the activation bytes (they do not vary between steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    tokens = sum(mb.tokens.numel() for mb in micro)
    real = tokens - sum(mb.padding_tokens() for mb in micro)
    attention = sum(allowed_pairs(mb.layout) for mb in micro)
    return {"micro_batches": len(micro), "rows": sum(mb.tokens.shape[0] for mb in micro), "tokens": tokens,
            "real_tokens": real, "attention_pairs": attention,
            "model_tflops": 4 * forward_flops(cfg, real, attention) / 1e12,  # reference forward + policy 3x
            "max_saved_mib": max(saved) / 2**20, "saved_mib": sum(saved) / 2**20,
            "step_s": statistics.median(times)}


def ratios(separate: dict, shared: dict) -> dict:
    keys = ("tokens", "real_tokens", "attention_pairs", "model_tflops", "max_saved_mib", "saved_mib", "step_s")
    return {k: separate[k] / shared[k] for k in keys}


def table(results: list[dict]) -> str:
    head = (f"{'mix':<11}{'packing':<9}{'rows':<9}{'mb':>4}{'tokens':>8}{'real':>8}{'attn pairs':>12}{'TFLOP':>7}"
            f"{'max MiB':>8}{'sum MiB':>8}{'step s':>8}{'x tok':>7}{'x attn':>7}{'x MiB':>7}{'x step':>7}")
    lines = [head]
    for r in results:
        x = r.get("separate_over_shared")
        tail = (f"{x['real_tokens']:>7.2f}{x['attention_pairs']:>7.2f}{x['saved_mib']:>7.2f}{x['step_s']:>7.2f}"
                if x else "")
        lines.append(f"{r['mix']:<11}{r['packing']:<9}{'shared' if r['share_prompt'] else 'separate':<9}"
                     f"{r['micro_batches']:>4}{r['tokens']:>8}{r['real_tokens']:>8}{r['attention_pairs']:>12}"
                     f"{r['model_tflops']:>7.2f}{r['max_saved_mib']:>8.1f}{r['saved_mib']:>8.1f}{r['step_s']:>8.2f}"
                     + tail)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.add_argument("--mixes", nargs="+", choices=sorted(PROMPT_MEDIANS), default=list(PROMPT_MEDIANS))
    parser.add_argument("--pairs", type=int, default=32, help="pairs in the global batch of each mix")
    parser.add_argument("--scale", type=float, default=0.25, help="length scale against the medians")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="pairs per unpacked micro-batch")
    parser.add_argument("--row-tokens", type=int, default=0,
                        help="packed row budget; 0: the longest separate-row pair rounded up to 64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_share_prompt.json")
    parser.set_defaults(block=8, sub_block=2)  # Fast-dLLM v2's 32 and 8 at the lengths' scale
    args = parser.parse_args()

    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    initialize(ParallelConfig(), seed=0)
    torch.set_num_threads(args.threads)
    cfg = backbone_config(args)
    policy, reference = build_model(cfg), build_model(cfg).eval()
    results, budgets = [], {}
    for mix in args.mixes:
        pairs = preference_like_pairs(args.pairs, cfg.vocab_size - 1, args.scale, seed=0,
                                      prompt_median=PROMPT_MEDIANS[mix])
        variants, budgets[mix] = build_variants(cfg, pairs, args.micro_batch_size, args.row_tokens)
        for (packing, share), micro in variants.items():
            got = {"mix": mix, "packing": packing, "share_prompt": share,
                   **measure(cfg, policy, reference, micro, args.repeats)}
            if share:
                got["separate_over_shared"] = ratios(results[-1], got)
            results.append(got)
    machine = host()
    print(f"{args.pairs} preference-like pairs per mix (scale {args.scale}); packed rows of {budgets} tokens;",
          machine)
    print(f"model: {args.family} hidden {args.hidden}, {args.layers} layers, block {args.block}; dTRPO rows; reference "
          "forward + policy forward/backward\n")
    print(table(results))
    write_results(args.out, {"args": vars(args), "machine": machine, "row_tokens": budgets, "results": results})


if __name__ == "__main__":
    main()
