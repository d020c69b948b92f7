"""The memory planner on CPU ranks: TP=2, PP=2 (each stage) and CP=2 on 2 ranks; with `moe`, a
tiny LLaDA2 (dense layer 0, routed and shared experts) at EP=2 alone, x TP=2 (sequence parallel),
x PP=2 and x CP=2 on 4 ranks.

Usage: torchrun --nproc-per-node 2 plan_memory_layouts.py
       torchrun --nproc-per-node 4 plan_memory_layouts.py moe

Per layout every rank counts its parameters (exactly the planner's `stage_parameters`) and
measures what autograd saves in the forward of a real micro-batch with recompute none, selective
and full (within 15% of the planner's `saved_bytes`; fp32, `local` layers and attention; with
experts, summed over the ranks, as the planner's routing is balanced and a rank's is not). A
pipeline stage after the first runs on a random input tensor in place of the received
activations. Rank 0 prints the comparisons and one PLAN OK per layout.
"""

import sys

import numpy as np
import torch
import torch.distributed as dist

from megatron.core import parallel_state

from dtrpo_mega.data import PreferencePair
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.trajectory import SchedulerConfig
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.perf import memory as M
from dtrpo_mega.perf.activations import SavedActivations
from dtrpo_mega.rows import RowBuilder
from dtrpo_mega.rows.samples import shared_prompt_length

LAYOUTS = [(2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1)]  # (TP, PP, CP, EP)
MOE_LAYOUTS = [(1, 1, 1, 2), (2, 1, 1, 2), (1, 2, 1, 2), (1, 1, 2, 2)]
PROMPT, RESPONSE, PAIRS = 13, 40, 2


def measure(cfg, tp: int, pp: int, cp: int, ep: int, granularity: RecomputeGranularity) -> tuple[str, int, float]:
    """This rank's comparison line, measured and predicted bytes."""
    initialize(ParallelConfig(tp, pp, cp, expert_model_parallel_size=ep), seed=3)
    stage, cp_rank = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_context_parallel_rank()
    recompute = RecomputeConfig(granularity)
    model = build_model(cfg, transformer_impl="local", recompute=recompute).train()
    params = sum(p.numel() for p in model.parameters())
    planned = M.stage_parameters(cfg, tp, pp, stage, ep)
    assert params == planned, (params, planned)

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(i, rng.integers(0, 200, PROMPT), rng.integers(0, 200, RESPONSE),
                            rng.integers(0, 200, RESPONSE)) for i in range(PAIRS)]
    mb = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=1,
                    pad_to_multiple=8).micro_batch(pairs, 0).context_shard(cp_rank, cp)
    layout = M.ParallelLayout(tp, pp, cp, dist.get_world_size() // (tp * pp * cp), ep)
    settings = M.Settings(cfg, layout, bf16=False, backend="local", transformer_impl="local", recompute=recompute)
    shared = int(shared_prompt_length(PROMPT, cfg.diffusion))  # the default: the pair's samples in one row
    shape = M.Workload(PROMPT, RESPONSE, pairs_per_micro_batch=PAIRS, shared_prompt=shared).shape(cfg.block_size, cp)
    rows, tokens = mb.tokens.shape
    assert (rows, tokens * cp) == (shape.rows, shape.tokens)
    if stage > 0:
        model.set_input_tensor(torch.randn(tokens // settings.sequence_shards, rows, cfg.hidden_size,
                                           requires_grad=True))
    with SavedActivations(model) as saved:
        model(mb.tokens, mb.layout, labels=mb.labels if stage == pp - 1 else None)
    # fp32 tables, saved by rope
    rope = M.cache_bytes(settings, shape)["rope"] if granularity == RecomputeGranularity.NONE else 0
    predicted = sum(M.saved_bytes(settings, shape, stage).values()) + rope
    ratio = predicted / saved.bytes
    # a rank's routing is not balanced: with experts, main compares the sums over the ranks
    assert cfg.moe is not None or abs(ratio - 1) < 0.15, (tp, pp, cp, granularity, stage, saved.bytes, predicted)
    line = (f"TP={tp} PP={pp} CP={cp} EP={ep} rank {dist.get_rank()} stage {stage} recompute {granularity.value}: "
            f"params {params}, saved {saved.bytes} predicted {predicted:.0f} ratio {ratio:.4f}")
    return line, saved.bytes, predicted


def main():
    moe = sys.argv[1:] == ["moe"]
    cfg = model_config("llada2" if moe else "fast_dllm_v2", "tiny", attention_backend="local")
    for tp, pp, cp, ep in MOE_LAYOUTS if moe else LAYOUTS:
        for granularity in RecomputeGranularity:
            line, saved, predicted = measure(cfg, tp, pp, cp, ep, granularity)
            lines = [None] * dist.get_world_size()
            dist.all_gather_object(lines, line)
            totals = torch.tensor([saved, predicted], dtype=torch.float64)
            dist.all_reduce(totals)
            ratio = float(totals[1] / totals[0])
            assert abs(ratio - 1) < 0.15, (tp, pp, cp, ep, granularity, totals)
            if dist.get_rank() == 0:
                print("\n".join(lines) + f"\nall ranks: ratio {ratio:.4f}", flush=True)
        if dist.get_rank() == 0:
            print(f"PLAN OK TP={tp} PP={pp} CP={cp} EP={ep}", flush=True)


if __name__ == "__main__":
    main()
