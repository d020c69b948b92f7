"""Context parallelism on long rows: per-rank memory and time at CP=1 and CP=2, and the balance.

    python tools/bench_context_parallel.py [--prompt 128 --response 1536 --cp 1 2 ...] [--out runs/bench_cp.json]

One preference pair (two `[z~ ; y0]` rows of `2 (P + L) - start` tokens) runs the policy forward
and backward of dTRPO's sequence sums under `torchrun --nproc-per-node CP` (gloo, one thread per
rank), each CP size in its own launch. Per rank: the activations autograd keeps (bytes of tensors
saved for backward), the process's peak RSS and the step time (median of `--repeats` after a
warm-up); and the balance of the zigzag split (allowed query-key pairs of the busiest rank over
the mean).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

import torch

from bench_common import add_backbone_options, backbone_config, host, timed, torchrun_worker, write_results


def worker(args) -> None:
    import numpy as np
    import torch.distributed as dist

    from dtrpo_mega.data import PreferencePair
    from dtrpo_mega.diffusion.scoring import Objective
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.parallel.context import pair_balance
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
    from dtrpo_mega.perf.activations import SavedActivations
    from dtrpo_mega.rows import RowBuilder
    from dtrpo_mega.training.objectives import sequence_logps

    cp = int(os.environ["WORLD_SIZE"])
    runtime = initialize(ParallelConfig(context_parallel_size=cp), seed=0)
    torch.set_num_threads(1)
    cfg = backbone_config(args)
    model = build_model(cfg, pg_collection=runtime.pg_collection)
    rng = np.random.default_rng(0)
    vocab = cfg.vocab_size - 1
    pair = PreferencePair(0, rng.integers(0, vocab, args.prompt), rng.integers(0, vocab, args.response),
                          rng.integers(0, vocab, args.response), None, None)
    whole = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0,
                       pad_to_multiple=2 * cp * 8).micro_batch([pair], 0)
    rows = whole.context_shard(runtime.cp_rank, cp)

    def step(measure=None):
        model.zero_grad()
        with measure or SavedActivations(model) as saved:
            loss = sequence_logps(rows, model(rows.tokens, rows.layout, labels=rows.labels),
                                  runtime.pg_collection.cp).sum()
        loss.backward()
        return saved.bytes

    saved, step_s = timed(step, args.repeats)
    mine = {"rank": dist.get_rank(), "activations_mib": saved / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": step_s, "local_tokens": rows.tokens.numel()}
    everyone = [None] * cp
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        balance = pair_balance(whole.layout, cp).tolist() if cp > 1 else [1.0]
        print(json.dumps({"cp": cp, "row_tokens": whole.tokens.shape[1], "rows": whole.tokens.shape[0],
                          "balance": balance, "ranks": everyone}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_options(parser)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--response", type=int, default=1536)
    parser.add_argument("--cp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/bench_cp.json")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = [torchrun_worker(__file__, cp, sys.argv[1:], f"CP={cp}") for cp in args.cp]
    machine = host()
    print(f"one pair, prompt {args.prompt}, responses {args.response}: 2 rows of {results[0]['row_tokens']} tokens; "
          f"{machine}")
    print(f"model: {args.family} hidden {args.hidden}, {args.layers} layers, block {args.block}; policy forward + "
          "backward, fp32, local attention\n")
    print(f"{'CP':>3}{'tokens/rank':>12}{'activations MiB/rank':>22}{'peak RSS MiB/rank':>19}{'step s':>8}"
          f"{'balance max/mean':>18}")
    for r in results:
        worst = max(r["ranks"], key=lambda x: x["activations_mib"])
        print(f"{r['cp']:>3}{worst['local_tokens']:>12}{worst['activations_mib']:>22.0f}"
              f"{max(x['peak_rss_mib'] for x in r['ranks']):>19.0f}{max(x['step_s'] for x in r['ranks']):>8.2f}"
              f"{max(r['balance']):>18.3f}")
    write_results(args.out, {"args": vars(args), "machine": machine, "results": results})


if __name__ == "__main__":
    main()
