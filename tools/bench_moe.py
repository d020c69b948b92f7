"""Expert parallelism on CPU ranks: tokens/s and per-rank memory of a tiny MoE dLLM at EP=1 and EP=2.

    python tools/bench_moe.py [--ranks 2 --ep 1 2 --experts 8 --topk 2 ...] [--out runs/bench_moe.json]

Each EP size runs in its own `torchrun --nproc-per-node RANKS` launch (gloo, one thread per rank,
DP = RANKS): every rank takes its own preference pairs (log-normal lengths, `bench_common`), and
runs the policy forward and backward of dTRPO's sequence sums, gradients finalized (the expert
data-parallel reduction included). Per rank: the parameters it holds (all, and the routed experts'),
the activations autograd keeps, the peak RSS and the step time (median of `--repeats` after a
warm-up); tokens/s counts every rank's real (non-padding) tokens over the slowest rank's step.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from bench_common import (
    add_backbone_options,
    backbone_config,
    host,
    preference_like_pairs,
    timed,
    torchrun_worker,
    write_results,
)


def model_of(args):
    from dtrpo_mega.models.config import MoEConfig

    moe = MoEConfig(num_experts=args.experts, ffn_hidden_size=args.expert_ffn, topk=args.topk)
    return backbone_config(args).with_overrides(moe=moe)


def worker(args) -> None:
    import torch.distributed as dist

    from dtrpo_mega.diffusion.scoring import Objective
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.grads import finalize_grads, is_expert_param
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
    from dtrpo_mega.perf.activations import SavedActivations
    from dtrpo_mega.rows import RowBuilder
    from dtrpo_mega.training.objectives import sequence_logps

    runtime = initialize(ParallelConfig(expert_model_parallel_size=args.ep_size), seed=0)
    torch.set_num_threads(1)
    cfg = model_of(args)
    model = build_model(cfg, pg_collection=runtime.pg_collection, seed=0)
    pairs = preference_like_pairs(args.pairs, cfg.vocab_size - 1, args.scale, seed=1 + runtime.rank)
    rows = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0).micro_batch(pairs, 0)

    def step(measure=None):
        model.zero_grad()
        with measure or SavedActivations(model) as saved:
            loss = sequence_logps(rows, model(rows.tokens, rows.layout, labels=rows.labels),
                                  runtime.pg_collection.cp).sum()
        loss.backward()
        finalize_grads(model, num_units=args.pairs * runtime.dp)
        return saved.bytes

    saved, step_s = timed(step, args.repeats)
    mib = lambda params: sum(p.numel() * p.element_size() for p in params) / 2**20  # noqa: E731
    mine = {"rank": dist.get_rank(), "parameters_mib": mib(model.parameters()),
            "expert_parameters_mib": mib(p for n, p in model.named_parameters() if is_expert_param(n)),
            "activations_mib": saved / 2**20, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": step_s, "real_tokens": rows.tokens.numel() - rows.padding_tokens()}
    everyone = [None] * runtime.world_size
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        tokens = sum(r["real_tokens"] for r in everyone)
        print(json.dumps({"ep": args.ep_size, "dp": runtime.dp, "tokens_per_s": tokens / max(r["step_s"] for r in
                                                                                          everyone),
                          "ranks": everyone}))
    dist.destroy_process_group()


def table(results: list[dict]) -> str:
    lines = [f"{'EP':>3}{'DP':>4}{'tokens/s':>10}{'params MiB/rank':>17}{'experts MiB/rank':>18}"
             f"{'activations MiB/rank':>22}{'peak RSS MiB/rank':>19}{'step s':>8}"]
    for r in results:
        worst = lambda key: max(x[key] for x in r["ranks"])  # noqa: E731
        lines.append(f"{r['ep']:>3}{r['dp']:>4}{r['tokens_per_s']:>10.0f}{worst('parameters_mib'):>17.1f}"
                     f"{worst('expert_parameters_mib'):>18.1f}{worst('activations_mib'):>22.0f}"
                     f"{worst('peak_rss_mib'):>19.0f}{worst('step_s'):>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.set_defaults(family="sdar_moe", block=4, sub_block=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--expert-ffn", type=int, default=256)
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4, help="preference pairs per rank")
    parser.add_argument("--scale", type=float, default=0.25, help="times the public sets' median lengths")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--ep", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ep-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/bench_moe.json")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from dtrpo_mega.models.attention import resolve_backend

    results = [torchrun_worker(__file__, args.ranks, [*sys.argv[1:], f"--ep-size={ep}"], f"EP={ep}") for ep in args.ep]

    machine = host()
    cfg = model_of(args)
    print(f"{args.ranks} ranks x {args.pairs} pairs (scale {args.scale}); {args.family} hidden {args.hidden}, "
          f"{args.layers} layers, {args.experts} experts of {args.expert_ffn}, top-{args.topk}, block {args.block}; "
          f"policy forward + backward, fp32, {resolve_backend(cfg.attention_backend).value} attention; {machine}\n")
    print(table(results))
    write_results(args.out, {"args": vars(args), "machine": machine, "results": results})


if __name__ == "__main__":
    main()
