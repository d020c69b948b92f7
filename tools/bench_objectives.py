"""Cost per preference pair of dTRPO and its peers on one backbone (method doc, section 6).

    python tools/bench_objectives.py [--hidden 256 --layers 4 --prompt 64 --response 128 ...] [--out bench.json]

For each objective: the reference forward (no grad) plus the policy forward and backward of one
micro-batch of pairs, timed over repeats (median, after a warm-up), divided by the pairs; the
rows and tokens that go through the model per pair; and the peak memory of a process that runs
only that objective (max RSS on CPU, max allocated on CUDA). Objectives: dtrpo, vrpo (n = 1, 4,
8), exact_trajectory, and DPO on the same backbone with a causal mask (the autoregressive cost
the method aims for); then dtrpo at four response lengths. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from bench_common import add_backbone_options, backbone_config, host, write_results

OBJECTIVES = ["dpo_causal", "dtrpo", "vrpo_1", "vrpo_4", "vrpo_8", "exact_trajectory"]


def micro_batch(objective: str, args, model_cfg):
    """The policy/reference micro-batch of `args.pairs` random pairs under one objective, and its
    sequence samples (the rows of each, or its `[z~ ; y0]` samples with their shared prompts)."""
    from dtrpo_mega.data import PreferencePair
    from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
    from dtrpo_mega.diffusion.scoring import Objective
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig
    from dtrpo_mega.rows import RowBuilder

    rng = np.random.default_rng(0)
    vocab = model_cfg.vocab_size - 1
    pairs = [PreferencePair(i, rng.integers(0, vocab, args.prompt), rng.integers(0, vocab, args.response),
                            rng.integers(0, vocab, args.response), None, None) for i in range(args.pairs)]
    if objective == "dpo_causal":
        seqs = [torch.from_numpy(np.concatenate([p.prompt, r])) for p in pairs for r in (p.chosen, p.rejected)]
        tokens, layout = collate([plain_sample(s) for s in seqs], MaskVariant.CAUSAL, model_cfg.block_size, pad_id=0)
        labels = torch.zeros_like(tokens)
        labels[:, :-1] = tokens[:, 1:]
        return tokens, layout, labels, tokens.shape[0]
    name, _, n = objective.partition("_") if objective.startswith("vrpo") else (objective, "", "1")
    builder = RowBuilder(model_cfg, SchedulerConfig(tokens_per_step=args.tokens_per_step), Objective(name), seed=0,
                         vrpo_samples=int(n), pad_to_multiple=8)
    mb = builder.micro_batch(pairs, epoch=0)
    return mb.tokens, mb.layout, mb.labels, mb.num_samples()


def run_one(objective: str, args) -> dict:
    """Time and memory of one objective, in this process."""
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    initialize(ParallelConfig(), seed=0)
    torch.set_num_threads(args.threads)
    cfg = backbone_config(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and args.bf16 else torch.float32
    policy, reference = build_model(cfg, params_dtype=dtype), build_model(cfg, params_dtype=dtype).eval()
    tokens, layout, labels, samples = micro_batch(objective, args, cfg)
    tokens, layout, labels = tokens.to(device), layout.to(device), labels.to(device)

    def step():
        with torch.no_grad():
            reference(tokens, layout, labels=labels)
        policy(tokens, layout, labels=labels).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (and compilation, for flex on CUDA)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    real = layout.segments > 0
    return {
        "objective": objective, "response": args.response, "prompt": args.prompt,
        "ms_per_pair": 1000 * statistics.median(times) / args.pairs,
        "rows_per_pair": samples / args.pairs,  # the training metric's: sequence samples, however laid out
        "tokens_per_pair": float(real.sum()) / args.pairs,  # through each of the policy and the reference
        "peak_mib": peak, "device": device, "dtype": str(dtype).replace("torch.", ""), "backend": args.backend,
    }


def in_subprocess(objective: str, response: int, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--only", objective, "--response", str(response)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise RuntimeError(f"{objective} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    base = next((r["ms_per_pair"] for r in rows if r["objective"] == "dpo_causal"), None)
    lines = [f"{'objective':<18}{'response':>9}{'rows/pair':>10}{'tokens/pair':>12}{'ms/pair':>10}{'x DPO':>8}"
             f"{'peak MiB':>10}"]
    for r in rows:
        rel = f"{r['ms_per_pair'] / base:.2f}" if base else "-"
        lines.append(f"{r['objective']:<18}{r['response']:>9}{r['rows_per_pair']:>10.1f}{r['tokens_per_pair']:>12.0f}"
                     f"{r['ms_per_pair']:>10.1f}{rel:>8}{r['peak_mib']:>10.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.add_argument("--tokens-per-step", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="response lengths for dtrpo's scaling")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per micro-batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 on CUDA")
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/bench_objectives.json")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run_one(args.only, args)))
        return

    argv = [a for a in sys.argv[1:]]
    rows = [in_subprocess(o, args.response, argv) for o in args.objectives]
    scaling = [in_subprocess("dtrpo", n, argv) for n in args.lengths]
    machine = host()
    print(f"per preference pair, reference forward + policy forward and backward ({machine})")
    print(f"model: {args.family} hidden {args.hidden}, {args.layers} layers, block {args.block}/{args.sub_block}, "
          f"prompt {args.prompt}\n")
    print(table(rows))
    print("\ndtrpo against response length")
    print(table(scaling))
    write_results(args.out, {"args": vars(args), "machine": machine, "objectives": rows, "dtrpo_lengths": scaling})


if __name__ == "__main__":
    main()
