"""The memory planner on 2 CPU ranks: TP=2, PP=2 (each stage) and CP=2.

Usage: torchrun --nproc-per-node 2 plan_memory_layouts.py

Per layout every rank counts its parameters (exactly the planner's `stage_parameters`) and
measures what autograd saves in the forward of a real micro-batch with recompute none, selective
and full (within 15% of the planner's `saved_bytes`; fp32, `local` layers and attention). A
pipeline stage after the first runs on a random input tensor in place of the received
activations. Rank 0 prints the comparisons and one PLAN OK per layout.
"""

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

LAYOUTS = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]  # (TP, PP, CP)
PROMPT, RESPONSE, PAIRS = 13, 40, 2


def measure(cfg, tp: int, pp: int, cp: int, granularity: RecomputeGranularity) -> str:
    initialize(ParallelConfig(tp, pp, cp), seed=3)
    stage, cp_rank = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_context_parallel_rank()
    recompute = RecomputeConfig(granularity)
    model = build_model(cfg, transformer_impl="local", recompute=recompute).train()
    params = sum(p.numel() for p in model.parameters())
    assert params == M.stage_parameters(cfg, tp, pp, stage), (params, M.stage_parameters(cfg, tp, pp, stage))

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(i, rng.integers(0, 200, PROMPT), rng.integers(0, 200, RESPONSE),
                            rng.integers(0, 200, RESPONSE)) for i in range(PAIRS)]
    mb = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=1,
                    pad_to_multiple=8).micro_batch(pairs, 0).context_shard(cp_rank, cp)
    settings = M.Settings(cfg, M.ParallelLayout(tp, pp, cp), bf16=False, backend="local", transformer_impl="local",
                          recompute=recompute)
    shared = int(shared_prompt_length(PROMPT, cfg.diffusion))  # the default: the pair's samples in one row
    shape = M.Workload(PROMPT, RESPONSE, pairs_per_micro_batch=PAIRS, shared_prompt=shared).shape(cfg.block_size, cp)
    rows, tokens = mb.tokens.shape
    assert (rows, tokens * cp) == (shape.rows, shape.tokens)
    if stage > 0:
        model.set_input_tensor(torch.randn(tokens, rows, cfg.hidden_size, requires_grad=True))
    with SavedActivations(model) as saved:
        model(mb.tokens, mb.layout, labels=mb.labels if stage == pp - 1 else None)
    # fp32 tables, saved by rope
    rope = M.cache_bytes(settings, shape)["rope"] if granularity == RecomputeGranularity.NONE else 0
    predicted = sum(M.saved_bytes(settings, shape, stage).values()) + rope
    ratio = predicted / saved.bytes
    assert abs(ratio - 1) < 0.15, (tp, pp, cp, granularity, stage, saved.bytes, predicted)
    return (f"TP={tp} PP={pp} CP={cp} rank {dist.get_rank()} stage {stage} recompute {granularity.value}: "
            f"params {params}, saved {saved.bytes} predicted {predicted:.0f} ratio {ratio:.4f}")


def main():
    cfg = model_config("fast_dllm_v2", "tiny", attention_backend="local")
    for tp, pp, cp in LAYOUTS:
        for granularity in RecomputeGranularity:
            line = measure(cfg, tp, pp, cp, granularity)
            lines = [None] * dist.get_world_size()
            dist.all_gather_object(lines, line)
            if dist.get_rank() == 0:
                print("\n".join(lines), flush=True)
        if dist.get_rank() == 0:
            print(f"PLAN OK TP={tp} PP={pp} CP={cp}", flush=True)


if __name__ == "__main__":
    main()
