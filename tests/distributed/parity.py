"""TP/PP parity on CPU ranks: every layout reproduces TP=1/PP=1's per-token log-probs and gradients.

Usage: torchrun --nproc-per-node 4 parity.py FAMILY WORK_DIR [tied|untied]

The TP=1/PP=1 reference weights and gradients are saved as megatron dist checkpoints; each other
layout loads the weights resharded, runs the same micro-batches through the pipeline schedule,
and compares its last-stage log-probs and every local gradient shard with the reference
gradients loaded into the same layout. Every layout also checks that the model's modules and the
schedule run over the runtime's own `pg_collection`, not megatron's global groups.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from common import Batch, assert_grads_match, load_weights, save_grads, save_weights

from dtrpo_mega.diffusion.mask import block_diffusion_sample, collate, plain_sample
from dtrpo_mega.models.dllm import DLLM, build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.parallel.runtime import ParallelConfig, Runtime, initialize
from dtrpo_mega.training.step import forward_backward

LAYOUTS = [(2, 1), (1, 2), (2, 2)]


def micro_batches(cfg) -> list[Batch]:
    g = torch.Generator().manual_seed(11)
    batches = []
    for lengths in ([(14, 3), (11, 6)], [(17, 9), (9, 2)]):
        samples, labels, scored = [], [], []
        for n, prompt in lengths:
            clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
            noisy = torch.where((torch.arange(n) >= prompt) & (torch.rand(n, generator=g) < 0.5), cfg.mask_token_id,
                                clean)
            if cfg.attention.value == "block_diffusion":
                sample = block_diffusion_sample(noisy, clean, prompt, cfg.block_size)
            else:
                sample = plain_sample(noisy)
            samples.append(sample)
        tokens, layout = collate(samples, cfg.attention, cfg.block_size, pad_id=0)
        labels = torch.randint(0, cfg.vocab_size, tokens.shape, generator=g)
        scored = (layout.segments > 0) & (torch.rand(tokens.shape, generator=g) < 0.7)
        batches.append(Batch(tokens, layout, labels, scored))
    return batches


def loss_func(mb: Batch, token_ce: torch.Tensor):
    scored = mb.scored.float()
    loss_sum = (token_ce * scored).sum()
    return loss_sum, scored.sum().int(), {"logps": (-token_ce * scored).detach()}


def run(cfg, tp, pp) -> tuple[Runtime, DLLM]:
    runtime = initialize(ParallelConfig(tp, pp), seed=5)
    return runtime, build_model(cfg, pg_collection=runtime.pg_collection)


def check_explicit_groups(model: DLLM, runtime: Runtime) -> None:
    """The model and its modules hold the runtime's collection itself (megatron makes a new one from
    its globals where none is passed) and the runtime's groups."""
    groups = runtime.pg_collection
    assert model.pg_collection is groups and model.decoder.pg_collection is groups
    for layer in model.decoder.layers:
        attention = layer.self_attention
        assert layer.pg_collection is groups and attention.pg_collection is groups
        assert attention.core_attention.cp_group is groups.cp and attention.core_attention.tp_group is groups.tp
        assert attention.linear_qkv.tp_group is groups.tp and attention.linear_proj.tp_group is groups.tp
        assert layer.mlp.linear_fc1.tp_group is groups.tp and layer.mlp.linear_fc2.tp_group is groups.tp
    assert model.pre_process == runtime.is_first_stage and model.post_process == runtime.is_last_stage
    if model.pre_process:
        assert model.embedding.word_embeddings.tp_group is groups.tp
    if model.post_process:
        assert model.output_layer.tp_group is groups.tp


def step(model: DLLM) -> list[torch.Tensor]:
    """Forward and backward through the schedule, which must hand its finalizer the model's own collection."""
    seen = []
    model.config.finalize_model_grads_func = lambda *args, pg_collection=None, **kwargs: seen.append(pg_collection)
    model.zero_grad()
    reports = forward_backward(model, micro_batches(model.dllm_config), loss_func)
    model.config.finalize_model_grads_func = None
    assert len(seen) == 1 and seen[0] is model.pg_collection, "the schedule did not run over the model's pg_collection"
    finalize_grads(model)
    return [r["logps"] for r in reports]


def main():
    family, work, tying = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    cfg = model_config(family, tie_embeddings=tying == "tied", num_layers=4)
    _, model = run(cfg, 1, 1)
    reference_logps = step(model)
    save_weights(model, work / "weights")
    save_grads(model, work / "grads")
    assert all(r.abs().sum() > 0 for r in reference_logps)

    for tp, pp in LAYOUTS:
        runtime, model = run(cfg, tp, pp)
        check_explicit_groups(model, runtime)
        load_weights(model, work / "weights")
        logps = step(model)
        if runtime.is_last_stage:
            assert len(logps) == len(reference_logps)
            for got, ref in zip(logps, reference_logps):
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        _, reference_grads = run(cfg, tp, pp)
        load_weights(reference_grads, work / "grads")
        checked = assert_grads_match(model, reference_grads, f"TP={tp} PP={pp}")
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"EXPLICIT GROUPS OK TP={tp} PP={pp}", flush=True)
            print(f"PARITY OK family={family} {tying} TP={tp} PP={pp} params_checked_rank0={checked}", flush=True)


if __name__ == "__main__":
    main()
