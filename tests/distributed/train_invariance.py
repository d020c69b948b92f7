"""One dTRPO step is the same at every layout: loss, metrics, gradients and re-masked rows.

Usage: torchrun --nproc-per-node 4 train_invariance.py DATA_PREFIX WORK_DIR FAMILY

A mixture-of-experts family runs EP1 (DP4) first, then EP2 beside DP, TP (sequence parallel), PP,
CP and packing, without the load-balancing loss (it depends on how tokens share a micro-batch).

The same global batch (8 pairs) runs at TP1PP1 (DP4), with a different micro-batch split, at
TP2 (DP2), PP2 (DP2) and TP2xPP2 (DP1, two splits), packed into rows of a token budget, and
with context parallelism (CP2 with DP, TP or PP; CP4; packed), through the training code's own
pieces, each pair's samples in one row with their prompt once (`data.share_prompt`, the default)
or, at the first layout and a few others, every sample in its own row. Rows are compared where
they are whole (CP=1), among layouts of the same kind.
"""

import hashlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from common import assert_grads_match, load_weights, save_grads, save_weights
from dtrpo_mega.config import load_config
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.training.loop import micro_batches_of, step_loss
from dtrpo_mega.training.metrics import reduce_reports
from dtrpo_mega.training.reference import ResidentReference
from dtrpo_mega.training.setup import build_policy, build_reference_model, setup_run
from dtrpo_mega.training.step import forward_backward

# (TP, PP, CP, pairs per micro-batch or 0 when packed, shared prompt); the global batch is 8 pairs.
LAYOUTS = [(1, 1, 1, 2, False), (1, 1, 1, 1, True), (2, 1, 1, 2, True), (1, 2, 1, 4, True), (2, 2, 1, 1, True),
           (2, 2, 1, 8, True), (1, 1, 1, 0, True), (2, 2, 1, 0, True), (2, 2, 1, 0, False), (1, 1, 2, 2, True),
           (1, 1, 2, 2, False), (2, 1, 2, 1, True), (1, 2, 2, 4, True), (1, 1, 4, 8, True), (1, 1, 2, 0, True),
           (2, 1, 2, 0, True)]
MOE_LAYOUTS = [(1, 1, 1, 2, True, 1), (1, 1, 1, 1, True, 2), (2, 1, 1, 2, True, 2), (1, 2, 1, 4, True, 2),
               (1, 1, 2, 2, True, 2), (1, 1, 1, 0, True, 2), (1, 1, 1, 2, False, 2)]  # ..., EP
ROW_TOKENS = 192  # packed rows: room for two or three pairs of the counting data


def row_digests(micro) -> dict[int, str]:
    """pair index -> digest of its rows (tokens, positions, noisy flags, labels, weights)."""
    out = {}
    for mb in micro:
        digests = {}
        for slot, _, r, m in mb.samples():
            h = digests.setdefault(slot, hashlib.sha256())
            for t in (mb.tokens[r][m], mb.layout.positions[r][m], mb.layout.noisy[r][m], mb.labels[r][m],
                      mb.weights[r][m]):
                h.update(t.numpy().tobytes())
        out.update({int(mb.pair_index[slot]): h.hexdigest() for slot, h in digests.items()})
    return out


def one_step(data, family, tp, pp, cp, mbs, shared, ep=1):
    batching = [f"train.micro_batch_size={mbs}"] if mbs else ["data.packing=true",
                                                              f"train.micro_batch_tokens={ROW_TOKENS}"]
    moe = ", moe: {aux_loss_coeff: 0.0}" if family in ("llada2", "sdar_moe") else ""
    cfg = load_config(None, [
        # blocks of 4: the counting prompts (5 tokens) share their first block
        f"data.path={data}", f"model.family={family}",
        f"model.overrides={{num_layers: 4, block_size: 4, sub_block_size: 4{moe}}}",
        f"parallel.expert_model_parallel_size={ep}",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
        f"parallel.context_parallel_size={cp}", "train.global_batch_size=8", "loss.beta=0.5", "loss.nll_weight=0.2",
        "data.pad_to_multiple=1", f"data.share_prompt={str(shared).lower()}", *batching,
    ])
    run = setup_run(cfg)
    policy = build_policy(run)
    return cfg, run, policy


def main():
    data, work, family = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    expected_metrics, expected_rows = None, {}
    threads = []
    layouts = MOE_LAYOUTS if family in ("llada2", "sdar_moe") else [(*layout, 1) for layout in LAYOUTS]
    for n, (tp, pp, cp, mbs, shared, ep) in enumerate(layouts):
        name = (f"TP={tp} PP={pp} CP={cp} " + (f"EP={ep} " if ep > 1 else "")
                + (f"micro_batch={mbs}" if mbs else "packed") + (" shared" if shared else ""))
        cfg, run, policy = one_step(data, family, tp, pp, cp, mbs, shared, ep)
        if n == 0:
            save_weights(policy, work / "weights")
        else:
            load_weights(policy, work / "weights")
        # Perturb the reference away from the policy so the log-ratios are not all zero.
        reference_model = build_reference_model(run, policy)
        with torch.no_grad():
            for p in reference_model.parameters():
                p.mul_(0.9)
        reference = ResidentReference(reference_model)
        micro = reference.with_reference(micro_batches_of(run, step=3))
        policy.zero_grad()
        reports = forward_backward(policy, micro, step_loss(run, micro))
        finalize_grads(policy, num_units=cfg.train.global_batch_size)

        if cp == 1:
            digests = [None] * dist.get_world_size()
            dist.all_gather_object(digests, row_digests(micro))
            rows = {k: v for d in digests for k, v in d.items()}
            assert len(rows) == 8, rows
            assert rows == expected_rows.setdefault(shared, rows), f"rows differ at {name}"
        if shared:
            assert all(mb.shared_prompts(r) for mb in micro for r in range(mb.tokens.shape[0])), \
                f"{name}: every row holds a shared prompt"
        if not mbs:
            assert (len(micro) < 8 / run.runtime.dp and micro[0].tokens.shape[0] == 1
                    and micro[0].tokens.shape[1] <= ROW_TOKENS // cp), f"{name}: not packed"

        metrics = reduce_reports(reports, run.runtime.pg_collection.dp) if run.runtime.is_last_stage else None
        if n == 0:
            expected_metrics = metrics
            assert abs(metrics["loss"] - 0.6931) > 1e-4, "log-ratios should not all vanish"
            save_grads(policy, work / "grads")
        else:
            if metrics is not None:
                for key, value in expected_metrics.items():
                    assert abs(metrics[key] - value) <= 1e-5 * max(1.0, abs(value)), \
                        f"{name} {key}: {metrics[key]} vs {value}"
            expected = build_reference_model(run)  # same layout; receives the reference gradients
            load_weights(expected, work / "grads")
            assert_grads_match(policy, expected, name)
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"INVARIANT OK {name} DP={run.runtime.dp}", flush=True)
        threads.append(len(os.listdir("/proc/self/task")))
    # each layout's process groups are destroyed when the next is made: their gloo threads go with them
    assert max(threads) <= 2 * threads[0], f"threads after each layout: {threads}"


if __name__ == "__main__":
    main()
