"""Decoding speed with and without the block KV cache, on one randomly initialized backbone.

    python tools/bench_decoding.py [--hidden 256 --layers 4 --prompt 64 --new 256 --batch 4 ...] [--out bench.json]

Block diffusion (the Fast-dLLM v2 decoder: sub-blocks, a fixed number of tokens per step, no
end-of-turn, so every run decodes exactly --new tokens): tokens/s and model calls with the
finished blocks cached (`DecodeConfig.kv_cache`) and recomputed, the two checked to produce the
same tokens. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_common import add_backbone_options, backbone_config, host, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.add_argument("--tokens-per-step", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, nargs="+", default=[64, 256], help="new tokens per sequence")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_decoding.json")
    args = parser.parse_args()

    from dtrpo_mega.generation.sampler import DecodeConfig, Sampler
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    initialize(ParallelConfig(), seed=0)
    torch.set_num_threads(args.threads)
    cfg = backbone_config(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(cfg).eval()
    prompts = torch.randint(0, args.vocab - 1, (args.batch, args.prompt),
                            generator=torch.Generator().manual_seed(0)).tolist()
    rows = []
    for new in args.new:
        tokens = {}
        for kv_cache in (False, True):
            sampler = Sampler(model, cfg.diffusion, cfg.vocab_size,
                              DecodeConfig(max_new_tokens=new, tokens_per_step=args.tokens_per_step, kv_cache=kv_cache),
                              device)
            sampler.generate(prompts[:1])  # warm-up
            start = time.perf_counter()
            generations, stats = sampler.generate(prompts)
            seconds = time.perf_counter() - start
            tokens[kv_cache] = [g.tokens for g in generations]
            rows.append({"new_tokens": new, "kv_cache": kv_cache, "tokens_per_s": stats.new_tokens / seconds,
                         "model_calls": stats.batch_calls, "tokens_per_forward": stats.tokens_per_forward,
                         "seconds": seconds})
        if tokens[True] != tokens[False]:
            raise SystemExit(f"new={new}: the cached decoder produced different tokens")
    machine = host(device)
    print(f"{args.family} hidden {args.hidden}, {args.layers} layers, block {args.block}/{args.sub_block}, "
          f"{args.tokens_per_step} tokens/step, prompt {args.prompt}, batch {args.batch} ({machine})\n")
    print(f"{'new tokens':>10}{'kv cache':>10}{'calls':>8}{'tokens/s':>12}{'speed-up':>10}")
    for r in rows:
        base = next(b for b in rows if b["new_tokens"] == r["new_tokens"] and not b["kv_cache"])
        print(f"{r['new_tokens']:>10}{str(r['kv_cache']):>10}{r['model_calls']:>8}{r['tokens_per_s']:>12.1f}"
              f"{r['tokens_per_s'] / base['tokens_per_s']:>10.2f}")
    write_results(args.out, {"args": vars(args), "machine": machine, "rows": rows})


if __name__ == "__main__":
    main()
