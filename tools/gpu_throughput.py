"""Training throughput of a randomly initialized model on one GPU: tokens/s, MFU, peak memory.

    python tools/gpu_throughput.py --docs docs/gpu.md     # 1.5B Fast-dLLM v2 shape, bf16, TP1
    python tools/gpu_throughput.py --dry-run              # the same code, tiny model, CPU, fp32

A case is an attention backend x a row length s x activation recomputation (off, or full over
every layer). A step is the forward and backward of one [z~ ; y0] row of s tokens (prompt 512,
the family's block size) with per-token cross-entropy; no optimizer step, so neither its time nor its memory
(megatron's distributed optimizer adds 12 bytes a parameter) is in the numbers. Each case runs
`--warmup` steps (flex compiles there), then up to `--steps` timed steps, and is stopped at its
time limit; cases that no longer fit `--budget-s` are skipped, and both are reported.
MFU = model FLOPs per step (`dtrpo_mega.perf.flops`: dense matmuls plus the mask's allowed
attention pairs, x3; recomputation not counted) / step time / the card's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dtrpo_mega.diffusion.mask import block_diffusion_sample, collate
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.perf.flops import allowed_pairs, peak_bf16_flops, training_step_flops

BEGIN, END = "<!-- gpu-throughput:begin -->", "<!-- gpu-throughput:end -->"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class CaseTimeout(Exception):
    pass


@dataclass
class Result:
    backend: str
    length: int
    recompute: bool
    status: str = "ok"
    steps: int = 0
    step_s: float | None = None
    tokens_per_s: float | None = None
    model_flops_per_step: int | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="fast_dllm_v2")
    parser.add_argument("--size", default="1.5b")
    parser.add_argument("--backends", nargs="+", default=["te", "flex"], choices=["te", "flex", "local"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192], help="row lengths s = P + 2L")
    parser.add_argument("--recompute", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens P of the row")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--case-limit-s", type=float, default=90.0, help="wall-clock limit of one case")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock limit of all cases")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_throughput.json"))
    parser.add_argument("--docs", type=Path, default=None,
                        help="markdown file whose gpu-throughput markers receive the table")
    parser.add_argument("--note", action="append", default=[], help="a line to print under the table (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU, fp32, local attention, short rows")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.size, args.device, args.dtype, args.backends = "tiny", "cpu", "fp32", ["local"]
        args.lengths, args.prompt, args.warmup, args.steps = [192], 32, 1, 2
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --dry-run or --device cpu for the CPU path)")
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup ({args.warmup}) and --steps ({args.steps}) must be >= 1")
    block = model_config(args.family, args.size).block_size
    for s in args.lengths:
        if s <= args.prompt or (s + args.prompt // block * block) % 2:
            parser.error(f"--lengths {s} with --prompt {args.prompt}: need s > P and s + P (down to a multiple of the "
                         f"block, {block}) even")
    return args


def row(cfg, s: int, prompt: int, device: str):
    """Random tokens and the layout of one [z~ ; y0] row of exactly s tokens."""
    n = (s + prompt // cfg.block_size * cfg.block_size) // 2
    clean = torch.randint(0, cfg.vocab_size - 1, (n,))
    noisy = clean.masked_fill(torch.rand(n) < 0.5, cfg.mask_token_id)
    tokens, layout = collate([block_diffusion_sample(noisy, clean, prompt, cfg.block_size)], cfg.attention,
                             cfg.block_size, pad_id=0)
    return tokens.to(device), layout.to(device)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CaseTimeout in this (main) thread after `seconds`."""

    def expire(signum, frame):
        raise CaseTimeout(f"stopped at its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_case(args, result: Result, limit_s: float) -> None:
    """Fill `result` in place, so a timeout keeps what was measured."""
    cfg = model_config(args.family, args.size, attention_backend=result.backend)
    recompute = RecomputeConfig(granularity=RecomputeGranularity.FULL) if result.recompute else None
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with time_limit(limit_s):
        model = build_model(cfg, params_dtype=DTYPES[args.dtype], recompute=recompute).train()
        tokens, layout = row(cfg, result.length, args.prompt, args.device)
        result.model_flops_per_step = training_step_flops(cfg, tokens.numel(), allowed_pairs(layout),
                                                          vocab=model.vocab_size)

        def step():
            loss = model(tokens, layout, labels=tokens).float().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

        for _ in range(args.warmup):
            step()
        sync(args.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
            sync(args.device)
            result.steps += 1
            elapsed = time.perf_counter() - start
            result.step_s = elapsed / result.steps


def finish(result: Result, peak_flops: float | None) -> None:
    if result.step_s:
        result.tokens_per_s = result.length / result.step_s
        result.mfu = result.model_flops_per_step / result.step_s / peak_flops if peak_flops else None


def run(args) -> tuple[dict, list[Result]]:
    initialize(ParallelConfig())
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = peak_bf16_flops(device_name) if args.device == "cuda" and args.dtype == "bf16" else None
    header = environment(device_name, peak, args)
    results, deadline = [], time.monotonic() + args.budget_s
    for s in args.lengths:
        for backend in args.backends:
            for recompute in args.recompute:
                result = Result(backend, s, recompute == "on")
                results.append(result)
                left = deadline - time.monotonic()
                if left < min(args.case_limit_s, 10.0):
                    result.status = "skipped: time budget spent"
                    continue
                try:
                    run_case(args, result, min(args.case_limit_s, left))
                except CaseTimeout as stop:
                    result.status = f"timeout: {stop} after {result.steps} timed steps"
                except torch.cuda.OutOfMemoryError:
                    result.status = "out of memory"
                except (RuntimeError, ValueError) as error:  # e.g. a backend this machine lacks
                    result.status = f"error: {str(error).splitlines()[0][:200]}"
                if args.device == "cuda":
                    result.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
                finish(result, peak)
                print(json.dumps(asdict(result)), flush=True)
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    return header, results


def environment(device_name: str, peak: float | None, args) -> dict:
    versions = {"torch": torch.__version__}
    for module in ("transformer_engine", "megatron.core"):
        try:
            versions[module] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            versions[module] = "not installed"
    if args.device == "cuda":
        versions["cuda"], versions["cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name,
        "peak_bf16_tflops": None if peak is None else peak / 1e12,
        "versions": versions,
        "model": f"{args.family} {args.size}, {args.dtype}, TP1, random weights",
        "row": f"[z~ ; y0], prompt {args.prompt}, block {model_config(args.family, args.size).block_size}",
        "steps": f"warmup {args.warmup}, timed {args.steps}, case limit {args.case_limit_s:.0f} s, budget "
                 f"{args.budget_s:.0f} s",
    }


def markdown(header: dict, results: list[Result], notes: list[str]) -> str:
    peak = header["peak_bf16_tflops"]
    lines = [
        f"Run {header['date']} on {header['device']} "
        "(peak dense bf16: "
        f"{'%.1f TFLOP/s' % peak if peak else 'unknown to dtrpo_mega.perf.flops: MFU not computed'}); "
        + ", ".join(f"{k} {v}" for k, v in header["versions"].items()) + ".",
        f"Model: {header['model']}; row: {header['row']}; {header['steps']}.",
        "",
        "| backend | s | recompute | tokens/s | step ms | MFU | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "-" if v is None else f % v  # noqa: E731
    for r in results:
        lines.append(
            f"| {r.backend} | {r.length} | {'full' if r.recompute else 'off'} | {fmt(r.tokens_per_s, '%.0f')} "
            f"| {fmt(r.step_s and r.step_s * 1e3, '%.0f')} | {fmt(r.mfu and 100 * r.mfu, '%.1f%%')} "
            f"| {fmt(r.peak_memory_gib, '%.1f')} | {r.status} |"
        )
    return "\n".join(lines + [""] * bool(notes) + notes)


def write_between_markers(path: Path, text: str) -> None:
    doc = path.read_text()
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        raise ValueError(f"{path} needs the markers {BEGIN} then {END}, once each")
    head, rest = doc.split(BEGIN)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main(argv=None) -> list[Result]:
    args = parse_args(argv)
    header, results = run(args)
    table = markdown(header, results, args.note)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**header, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    if args.docs:
        write_between_markers(args.docs, table)
        print(f"wrote the table into {args.docs}")
    return results


if __name__ == "__main__":
    main()
