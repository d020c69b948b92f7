"""Imported checkpoints at every TP/PP layout: load, compare logits with transformers, save again.

Usage: torchrun --nproc-per-node 4 convert_layouts.py WORK_DIR NAME [NAME ...]

WORK_DIR/NAME/megatron is an imported checkpoint; WORK_DIR/NAME/reference.pt holds tokens and the
transformers model's causal float32 logits. Each layout loads the checkpoint (resharding it),
checks at PP=1 that its vocabulary shard of the logits equals the reference, and saves to
WORK_DIR/NAME/tp{T}pp{P} with megatron-core's own writer, for the caller to export and compare.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron.core import parallel_state

from dtrpo_mega.checkpoint.model import load_model, read_model_config, save_model
from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (TP, PP); with EP2 for a mixture of experts


def check_logits(model, cfg, reference: dict, label: str) -> None:
    tokens = reference["tokens"]
    padded, layout = collate([plain_sample(t) for t in tokens], MaskVariant.CAUSAL, cfg.block_size, pad_id=0,
                             pad_to_multiple=4)  # sequence parallel (MoE at TP2): a multiple of TP
    with torch.no_grad():
        logits = model(padded, layout)[:, : tokens.shape[1]]
    shard = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * shard
    real = max(0, min(shard, cfg.vocab_size - start))
    expected = reference["logits"][..., start : start + real]
    torch.testing.assert_close(logits[..., :real], expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{label}: {m}")
    assert torch.isinf(logits[..., real:]).all(), f"{label}: padded vocabulary is not masked"


def main():
    work, names = Path(sys.argv[1]), sys.argv[2:]
    for name in names:
        cfg = read_model_config(work / name / "megatron")
        reference = torch.load(work / name / "reference.pt")
        for tp, pp in LAYOUTS:
            label = f"{name} TP={tp} PP={pp}"
            initialize(ParallelConfig(tp, pp, expert_model_parallel_size=1 if cfg.moe is None else 2), seed=1)
            model = build_model(cfg).eval()
            load_model(model, work / name / "megatron")
            if pp == 1:
                check_logits(model, cfg, reference, label)
            save_model(model, work / name / f"tp{tp}pp{pp}", cfg)
            if dist.get_rank() == 0:
                print(f"LAYOUT OK {label}{' logits checked' if pp == 1 else ''}", flush=True)


if __name__ == "__main__":
    main()
