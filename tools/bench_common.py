"""What the benchmarks in tools/ share: the options that shape a randomly initialized backbone,
the machine line and the JSON results file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families import model_config


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="fast_dllm_v2")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--sub-block", type=int, default=8)
    parser.add_argument("--backend", default="auto", help="attention backend: auto, local, te, flex")


def backbone_config(args: argparse.Namespace) -> DLLMConfig:
    return model_config(args.family, vocab_size=args.vocab, hidden_size=args.hidden, ffn_hidden_size=4 * args.hidden,
                        num_layers=args.layers, num_attention_heads=args.heads, num_query_groups=args.groups,
                        block_size=args.block, sub_block_size=args.sub_block, attention_backend=args.backend)


def preference_like_pairs(n: int, vocab: int, scale: float, seed: int, prompt_median: int = 160,
                          response_median: int = 260):
    """Pairs with log-normal lengths shaped like public preference sets (defaults: prompts median 160
    tokens, sigma 0.8; chosen and rejected drawn apart, median 260, sigma 0.7, so long-tailed and of
    different lengths), each median times `scale`, clipped to 1..8x the scaled median."""
    from dtrpo_mega.data import PreferencePair

    rng = np.random.default_rng(seed)

    def length(median: float, sigma: float) -> int:
        return int(np.clip(rng.lognormal(np.log(median * scale), sigma), 1, 8 * median * scale))

    return [PreferencePair(i, rng.integers(0, vocab, length(prompt_median, 0.8)),
                           rng.integers(0, vocab, length(response_median, 0.7)),
                           rng.integers(0, vocab, length(response_median, 0.7)), None, None) for i in range(n)]


def host(*extra: str) -> str:
    """The processor, core count (and `extra`, e.g. the device) and torch version, for result tables."""
    return ", ".join([platform.processor() or platform.machine(), f"{os.cpu_count()} cores", *extra,
                      f"torch {torch.__version__}"])


def timed(step, repeats: int):
    """`step()` once to warm up, then `repeats` times: its last result and the median seconds."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def torchrun_worker(script: str, nproc: int, argv: list[str], label: str) -> dict:
    """Run `script ARGV --worker` on `nproc` gloo ranks (one thread each) and return the JSON its
    rank 0 prints last."""
    from dtrpo_mega.parallel.runtime import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           script, *argv, "--worker"]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"\nwrote {path}")
