"""Per-GPU memory of a training config, with recompute none / selective / full side by side.

    python tools/plan_memory.py --config examples/configs/fast_dllm_v2_7b.yaml [section.key=value ...]
        [--family NAME --size SIZE] [--tp N --pp N --cp N --ep N --etp N] [--dp N | --world-size N]
        [--gpu-memory 80] [--reserve 4] [--prompt-length 512 --response-length 1024] [--backend auto|local|te|flex]
    python tools/plan_memory.py --family llada2 --size mini --world-size 8 --search [...]

Parallel sizes default to the config's (DP: 1, or the world size / (TP x PP x CP)); EP and ETP
split a mixture of experts' experts. The model comes from `model.load`'s dtrpo_model.json when it
exists, else from `model.family` / `model.size` (`--family` / `--size`); without `--config`, the
default config. `--search` plans every TP x PP x EP layout of `--world-size` GPUs (CP and ETP as
configured) and prints which fit with each recompute setting.
Formulas and assumptions: docs/training.md, "Planning memory" (dtrpo_mega/perf/memory.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

from dtrpo_mega.config import load_config
from dtrpo_mega.models.attention import AttentionBackend
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity
from dtrpo_mega.perf import memory as M
from dtrpo_mega.perf.flops import parameter_counts
from dtrpo_mega.training.setup import resolve_model_config

GIB = 1 << 30


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="default: the default config")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--family", help="model.family")
    parser.add_argument("--size", help="model.size")
    for name in ("tp", "pp", "cp", "ep", "etp", "dp", "world-size"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--search", action="store_true", help="every TP x PP x EP layout of --world-size GPUs")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    parser.add_argument("--reserve", type=float, default=4.0,
                        help="GiB not planned: CUDA context, NCCL, fragmentation (default 4)")
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--response-length", type=int, default=1024)
    parser.add_argument("--backend", choices=[b.value for b in AttentionBackend],
                        help="default: the model's (auto = flex, the CUDA default)")
    parser.add_argument("--transformer-impl", choices=M.IMPLS, default="transformer_engine")
    return parser.parse_intermixed_args(argv)


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides, the model and layout flags' included."""
    overrides = list(args.overrides)
    for flag, key in (("family", "model.family"), ("size", "model.size"),
                      ("tp", "parallel.tensor_model_parallel_size"), ("pp", "parallel.pipeline_model_parallel_size"),
                      ("cp", "parallel.context_parallel_size"), ("ep", "parallel.expert_model_parallel_size"),
                      ("etp", "parallel.expert_tensor_parallel_size")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return overrides


def planned_model(cfg) -> tuple[DLLMConfig, str]:
    """The config's model, and a note when `model.load` was not found."""
    try:
        return resolve_model_config(cfg), ""
    except FileNotFoundError:
        return (model_config(cfg.model.family, cfg.model.size, **cfg.model.overrides),
                f"(model.load={cfg.model.load} not found: planned from model.family/size)")


def resolve(args: argparse.Namespace) -> tuple[M.Settings, M.Workload, str]:
    """The planner's inputs from the config, its overrides and the layout flags; a note on the model's source."""
    cfg = load_config(args.config, config_overrides(args))
    par = cfg.parallel
    model_parallel = par.tensor_model_parallel_size * par.pipeline_model_parallel_size * par.context_parallel_size
    dp = args.dp or 1
    if args.world_size is not None:
        if args.dp is not None:
            raise ValueError("give --dp or --world-size, not both")
        if args.world_size % model_parallel:
            raise ValueError(f"--world-size {args.world_size} is not divisible by TP={par.tensor_model_parallel_size} "
                             f"x PP={par.pipeline_model_parallel_size} x CP={par.context_parallel_size}")
        dp = args.world_size // model_parallel
    model, note = planned_model(cfg)
    settings, work = M.from_train_config(cfg, model, dp, args.prompt_length, args.response_length, args.backend,
                                         args.transformer_impl)
    return settings, work, note


def variants(s: M.Settings) -> dict[str, M.Settings]:
    """The configured recompute setting and the two others (full: uniform, one layer per group)."""
    out = {}
    for g in RecomputeGranularity:
        rc = s.recompute if g == s.recompute.granularity else RecomputeConfig(g)
        out[g.value + ("*" if g == s.recompute.granularity else "")] = dataclasses.replace(s, recompute=rc)
    return out


def describe_model(m: DLLMConfig, note: str = "") -> str:
    """The model's size in a line: total parameters, and active ones for a mixture of experts."""
    total, active = parameter_counts(m)
    experts = (f", {active / 1e9:.2f} B active ({m.moe.num_experts} experts, top-{m.moe.topk}, "
               f"{len(m.moe_layers)} MoE layers)" if m.moe else "")
    line = f"{m.family}: {m.num_layers} layers, hidden {m.hidden_size}, {total / 1e9:.2f} B parameters{experts}"
    return f"{line} {note}" if note else line


def report(s: M.Settings, work: M.Workload, gpu_memory: float, reserve: float, note: str = "") -> str:
    m, lay = s.model, s.layout
    shape = work.shape(m.block_size, lay.cp)
    capacity = (gpu_memory - reserve) * GIB
    dtype = "bf16" if s.bf16 else "fp32"
    experts = ""
    if m.moe:
        experts = f" EP={lay.ep} ETP={lay.etp}" + (" (sequence parallel)" if s.sequence_shards > 1 else "")
    lines = [
        describe_model(m, note),
        f"TP={lay.tp} PP={lay.pp} CP={lay.cp} DP={lay.dp}{experts}; {dtype}; {s.transformer_impl} layers; "
        f"{s.backend.value} attention; reference: "
        f"{'resident' if s.resident_reference else 'not resident (precomputed, or SFT)'}",
        f"micro-batch: {shape.rows} row(s) x {shape.tokens} tokens ({shape.tokens // lay.cp} per CP rank); prompt "
        f"{work.prompt_length}, response {work.response_length}"
        + (f"; packed rows of {work.packed_tokens} tokens" if work.packed_tokens else "")
        + f"; {work.micro_batches(m.block_size)} micro-batches per step",
        "",
    ]
    plans = {name: (v, M.peak(v, work)) for name, v in variants(s).items()}
    rows = [
        ("per layer per token, KiB",
         lambda v, p: M.stage_layer_bytes(v, shape.tokens, p.stage) / v.stage_layers / 1024, "{:.2f}"),
        ("fullest pipeline stage", lambda v, p: p.stage, "{}"),
        ("micro-batches in flight", lambda v, p: p.in_flight, "{}"),
        (f"weights ({dtype}), GiB", lambda v, p: p.weights / GIB, "{:.2f}"),
        ("gradients (fp32), GiB", lambda v, p: p.gradients / GIB, "{:.2f}"),
        (f"optimizer (/ DP x CP = {lay.dp * lay.cp}{f'; experts / {lay.expert_dp}' if m.moe else ''}), GiB",
         lambda v, p: p.optimizer / GIB, "{:.2f}"),
        ("reference weights, GiB", lambda v, p: p.reference / GIB, "{:.2f}"),
        ("mask/bias + rope, GiB", lambda v, p: p.caches / GIB, "{:.2f}"),
        ("activations, GiB", lambda v, p: p.activations / GIB, "{:.2f}"),
        ("transient, GiB", lambda v, p: p.transient / GIB, "{:.2f}"),
        ("reference forward, GiB", lambda v, p: p.reference_forward / GIB, "{:.2f}"),
        ("total, GiB", lambda v, p: p.total / GIB, "{:.2f}"),
        (f"max response ({gpu_memory:g} - {reserve:g} GiB)", lambda v, p: M.max_response_length(v, work, capacity),
         "{}"),
    ]
    if work.packed_tokens:
        rows.append(("max micro_batch_tokens", lambda v, p: M.max_packed_tokens(v, work, capacity), "{}"))
    width = max(len(r[0]) for r in rows) + 2
    lines.append(" " * width + "".join(f"{name:>12}" for name in plans))
    for label, value, fmt in rows:
        cells = [value(v, p) for v, p in plans.values()]
        lines.append(f"{label:<{width}}" + "".join(f"{'-' if c is None else fmt.format(c):>12}" for c in cells))
    return "\n".join(lines)


def search(args: argparse.Namespace) -> str:
    """The fullest stage's total of every TP x PP x EP layout of --world-size GPUs, per recompute setting."""
    if args.world_size is None or any(getattr(args, f) is not None for f in ("tp", "pp", "ep", "dp")):
        raise ValueError("--search needs --world-size and tries every TP, PP and EP itself (no --tp/--pp/--ep/--dp)")
    world, capacity = args.world_size, (args.gpu_memory - args.reserve) * GIB
    cfg = load_config(args.config, config_overrides(args))
    model, note = planned_model(cfg)
    cp, etp = cfg.parallel.context_parallel_size, cfg.parallel.expert_tensor_parallel_size
    sizes = [n for n in range(1, world + 1) if world % n == 0]
    rows, skipped, names = [], [], []
    for tp, pp, ep in itertools.product(sizes, sizes, sizes if model.moe else [1]):
        if world % (tp * pp * cp) or world % (ep * etp * pp):
            continue
        try:
            s, work, _ = resolve(argparse.Namespace(**{**vars(args), "tp": tp, "pp": pp, "ep": ep}))
        except ValueError as err:
            skipped.append(f"  TP={tp} PP={pp} EP={ep}: {err}")
            continue
        plans = {name: M.peak(v, work) for name, v in variants(s).items()}
        names = list(plans)
        static = max(p.static for p in M.plan(s, work))
        fits = [name.rstrip("*") for name, p in plans.items() if p.total <= capacity]
        cells = [tp, pp, s.layout.dp] + ([ep, s.layout.expert_dp] if model.moe else [])
        rows.append("".join(f"{c:>5}" for c in cells) + f"{static / GIB:>9.2f}"
                    + "".join(f"{p.total / GIB:>11.2f}" for p in plans.values()) + f"  {', '.join(fits) or '-'}")
    if not rows:
        raise ValueError(f"no layout of {world} GPUs fits the model and config:\n" + "\n".join(skipped))
    shape = work.shape(model.block_size, cp)
    header = ["TP", "PP", "DP"] + (["EP", "EDP"] if model.moe else [])
    lines = [
        describe_model(model, note),
        f"{world} GPUs of {args.gpu_memory:g} GiB, {args.gpu_memory - args.reserve:g} planned; CP={cp} ETP={etp}; "
        f"micro-batch: {shape.rows} row(s) x {shape.tokens} tokens (prompt {work.prompt_length}, response "
        f"{work.response_length}); {'bf16' if s.bf16 else 'fp32'}; reference: "
        f"{'resident' if s.resident_reference else 'not resident'}",
        "GiB on the fullest pipeline stage; static: weights, gradients, optimizer and reference weights",
        "",
        "".join(f"{c:>5}" for c in header) + f"{'static':>9}" + "".join(f"{n:>11}" for n in names) + "  fits",
        *rows,
    ]
    return "\n".join(lines + (["", "not possible:", *skipped] if skipped else []))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.search:
            print(search(args))
            return 0
        settings, work, note = resolve(args)
    except ValueError as err:
        print(f"plan_memory: {err}", file=sys.stderr)
        return 2
    print(report(settings, work, args.gpu_memory, args.reserve, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
