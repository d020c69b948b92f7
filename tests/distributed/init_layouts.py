"""Random initialization is the same at every layout: the weights drawn at TP x PP in {1, 2}^2
(tied and untied embeddings), saved, all load at TP=1/PP=1 as the same tensors.

Usage: torchrun --nproc-per-node 4 init_layouts.py WORK_DIR
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dtrpo_mega.checkpoint.model import load_model, save_model
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]


def main():
    work = Path(sys.argv[1])
    for tied in (False, True):
        cfg = model_config("fast_dllm_v2", tie_embeddings=tied)
        for tp, pp in LAYOUTS:
            initialize(ParallelConfig(tp, pp), seed=5 + tp + 10 * pp)  # megatron's own generators differ per layout
            save_model(build_model(cfg, seed=7), work / f"tied{tied}_tp{tp}_pp{pp}")
        initialize(ParallelConfig(1, 1), seed=0)
        weights = []
        for tp, pp in LAYOUTS:
            model = build_model(cfg)
            load_model(model, work / f"tied{tied}_tp{tp}_pp{pp}")
            weights.append(model.state_dict())
        for (tp, pp), state in zip(LAYOUTS[1:], weights[1:]):
            for name, value in weights[0].items():
                if not name.endswith("_extra_state"):
                    assert torch.equal(value, state[name]), f"tied={tied} TP={tp} PP={pp}: {name} differs"
        assert weights[0]["embedding.word_embeddings.weight"][cfg.vocab_size :].abs().sum() == 0, \
            "padding rows are zero"
        if dist.get_rank() == 0:
            print(f"SAME WEIGHTS tied={tied} at {LAYOUTS}", flush=True)
        # the last stage's copy of a tied embedding holds the same draw
        if tied:
            initialize(ParallelConfig(1, 2), seed=3)
            model = build_model(cfg, seed=7)
            weight = model.shared_embedding_or_output_weight()
            assert torch.equal(weight, weights[0]["embedding.word_embeddings.weight"]), "tied output copy differs"
            if dist.get_rank() == 0:
                print("SAME WEIGHTS tied output copy at PP=2", flush=True)
        dist.barrier()
    if dist.get_rank() == 0:
        print("SAME WEIGHTS done", flush=True)


if __name__ == "__main__":
    main()
