"""Packing against right-padded micro-batches on a preference-like length distribution.

    python tools/bench_packing.py [--pairs 64 --micro-batch-size 4 --row-tokens 0 ...] [--out runs/bench_packing.json]

Synthetic pairs whose prompt and response lengths follow log-normal distributions shaped like
public preference sets (long-tailed responses, chosen and rejected of different lengths), scaled
to a CPU-sized model. The same pairs run as one global batch twice: unpacked (`--micro-batch-size`
pairs per micro-batch, each sample its own row padded to the micro-batch's longest) and packed
(whole pairs in rows of `--row-tokens`; default: the longest pair rounded up to 64). Each step
is a reference forward plus a policy forward and backward of every micro-batch. Reports padding,
real (non-padding) tokens per second and step time; the median of `--repeats` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_common import add_backbone_options, backbone_config, host, preference_like_pairs, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.add_argument("--pairs", type=int, default=64, help="pairs in the global batch")
    parser.add_argument("--scale", type=float, default=0.25, help="length scale against the preference-like medians")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--row-tokens", type=int, default=0,
                        help="packed row budget; 0: the longest pair rounded up to 64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_packing.json")
    args = parser.parse_args()

    from dtrpo_mega.diffusion.scoring import Objective
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
    from dtrpo_mega.rows import RowBuilder

    initialize(ParallelConfig(), seed=0)
    torch.set_num_threads(args.threads)
    cfg = backbone_config(args)
    policy, reference = build_model(cfg), build_model(cfg).eval()
    builder = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0, pad_to_multiple=8)
    pairs = preference_like_pairs(args.pairs, cfg.vocab_size - 1, args.scale, seed=0)
    longest = max(sum(len(s) for s in builder.pair_samples(p, 0)) for p in pairs)
    budget = args.row_tokens or -(-longest // 64) * 64
    variants = {
        "unpacked": [builder.micro_batch(pairs[i : i + args.micro_batch_size], 0)
                     for i in range(0, len(pairs), args.micro_batch_size)],
        "packed": builder.packed_micro_batches(pairs, 0, budget),
    }

    def step(micro):
        for mb in micro:
            with torch.no_grad():
                reference(mb.tokens, mb.layout, labels=mb.labels)
            policy(mb.tokens, mb.layout, labels=mb.labels).sum().backward()

    results = []
    for name, micro in variants.items():
        step(micro)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step(micro)
            times.append(time.perf_counter() - start)
        total = sum(mb.tokens.numel() for mb in micro)
        padding = sum(mb.padding_tokens() for mb in micro)
        seconds = statistics.median(times)
        results.append({"variant": name, "micro_batches": len(micro), "rows": sum(mb.tokens.shape[0] for mb in micro),
                        "tokens": total, "padding_fraction": padding / total, "step_s": seconds,
                        "real_tokens_per_s": (total - padding) / seconds})
    base = results[0]["real_tokens_per_s"]
    machine = host()
    print(f"{args.pairs} preference-like pairs (scale {args.scale}), longest pair {longest} tokens, packed rows of "
          f"{budget}; {machine}")
    print(f"model: {args.family} hidden {args.hidden}, {args.layers} layers, block {args.block}; reference forward + "
          "policy forward/backward\n")
    print(f"{'variant':<10}{'micro-batches':>14}{'rows':>6}{'tokens':>8}{'padding':>9}{'step s':>8}{'real tok/s':>11}"
          f"{'x':>6}")
    for r in results:
        print(f"{r['variant']:<10}{r['micro_batches']:>14}{r['rows']:>6}{r['tokens']:>8}{r['padding_fraction']:>9.1%}"
              f"{r['step_s']:>8.2f}{r['real_tokens_per_s']:>11.0f}{r['real_tokens_per_s'] / base:>6.2f}")
    write_results(args.out, {"args": vars(args), "machine": machine, "row_tokens": budget, "longest_pair": longest,
                             "results": results})


if __name__ == "__main__":
    main()
