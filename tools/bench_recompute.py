"""Activation memory and step time of a training step under each activation-recompute setting.

    python tools/bench_recompute.py [--hidden 256 --layers 8 --rows 2 --tokens 1024 ...] [--out bench.json]

One step is the forward of `--rows` block-diffusion rows of `--tokens` tokens each (one
`[z~ ; y0]` sequence per row) with the per-token cross-entropy summed, and its backward. Per
setting: the bytes of the tensors saved for backward during the forward (parameters excluded,
shared storages once; `dtrpo_mega.perf.activations`), the peak memory of a process that runs
only that setting (max RSS on CPU, max allocated on CUDA) and the same measure just before the
first step, and the median wall and CPU time of a step after a warm-up step (CPU time, over
all threads, is the steadier of the two on a shared machine). The tool checks that every setting
gives the loss of `none`. Prints a table, writes JSON.
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

import torch

from bench_common import add_backbone_options, backbone_config, host, write_results
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity, RecomputeMethod

SETTINGS = ["none", "selective", "full_uniform_1", "full_block_half"]


def recompute_config(name: str, layers: int) -> RecomputeConfig:
    full = RecomputeGranularity.FULL
    return {
        "none": RecomputeConfig(),
        "selective": RecomputeConfig(RecomputeGranularity.SELECTIVE),
        "full_uniform_1": RecomputeConfig(full, RecomputeMethod.UNIFORM, 1),
        "full_block_half": RecomputeConfig(full, RecomputeMethod.BLOCK, max(1, layers // 2)),
    }[name]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def run_one(name: str, args) -> dict:
    """Saved activations, memory and step time of one setting, in this process."""
    from dtrpo_mega.diffusion.mask import block_diffusion_sample, collate
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
    from dtrpo_mega.perf.activations import SavedActivations

    initialize(ParallelConfig(), seed=0)
    torch.set_num_threads(args.threads)
    cfg = backbone_config(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and args.bf16 else torch.float32
    model = build_model(cfg, params_dtype=dtype, recompute=recompute_config(name, args.layers))
    g = torch.Generator().manual_seed(0)
    n = args.tokens // 2
    samples = []
    for _ in range(args.rows):
        clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
        noisy = torch.where(torch.rand(n, generator=g) < 0.5, cfg.mask_token_id, clean)
        samples.append(block_diffusion_sample(noisy, clean, 0, cfg.block_size))
    tokens, layout = collate(samples, cfg.attention, cfg.block_size, pad_id=0)
    tokens, layout = tokens.to(device), layout.to(device)
    before = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else _rss_mib()

    def step() -> tuple[float, int]:
        model.zero_grad(set_to_none=True)
        with SavedActivations(model) as saved:
            loss = model(tokens, layout, labels=tokens).sum()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item(), saved.bytes

    loss, saved_bytes = step()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "setting": name,
        "recompute": {k: getattr(v, "value", v) for k, v in vars(recompute_config(name, args.layers)).items()},
        "loss": loss, "saved_mib": saved_bytes / 2**20, "peak_mib": peak, "before_step_mib": before,
        "step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu_times), "tokens": tokens.numel(),
        "device": device, "dtype": str(dtype).replace("torch.", ""),
    }


def in_subprocess(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--only", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["setting"] == "none")
    lines = [f"{'setting':<16}{'saved MiB':>10}{'x smaller':>10}{'peak MiB':>10}{'before':>8}{'step s':>8}{'CPU s':>8}"
             f"{'x CPU':>7}"]
    for r in rows:
        lines.append(f"{r['setting']:<16}{r['saved_mib']:>10.1f}{base['saved_mib'] / r['saved_mib']:>10.2f}"
                     f"{r['peak_mib']:>10.0f}{r['before_step_mib']:>8.0f}{r['step_s']:>8.2f}{r['step_cpu_s']:>8.2f}"
                     f"{r['step_cpu_s'] / base['step_cpu_s']:>7.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.set_defaults(layers=8)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per row (even)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 on CUDA")
    parser.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/bench_recompute.json")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run_one(args.only, args)))
        return

    rows = [in_subprocess(name, sys.argv[1:]) for name in dict.fromkeys(["none", *args.settings])]
    base = rows[0]["loss"]
    for r in rows:
        if abs(r["loss"] - base) > 1e-5 * abs(base):
            raise RuntimeError(f"{r['setting']}: loss {r['loss']} differs from none's {base}")
    machine = host()
    print(f"one training step, {args.rows} rows x {args.tokens} tokens ({machine})")
    print(f"model: {args.family} hidden {args.hidden}, {args.layers} layers, vocabulary {args.vocab}, backend "
          f"{args.backend}\n")
    print(table(rows))
    write_results(args.out, {"args": vars(args), "machine": machine, "settings": rows})


if __name__ == "__main__":
    main()
