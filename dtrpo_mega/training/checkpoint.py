"""Training checkpoints: complete or absent, resumable, reshardable for the model weights.

    CKPT/iter_0000040/model/             weights, megatron dist_checkpointing (any TP/PP on load)
    CKPT/iter_0000040/optimizer/         GPU: the distributed optimizer's sharded state
    CKPT/iter_0000040/rank_00003.pt      per rank: CPU optimizer state, torch RNG state, layout
                                         (the data and re-masking randomness is a pure function
                                         of seed, epoch and index, so it needs no state)
    CKPT/iter_0000040/trainer.json       step, data position, config
    CKPT/latest_checkpointed_iteration.txt

The tracker file is replaced atomically only after every rank finished writing, so a save cut
short is never resumed from. Optimizer state is restored only at the same TP/PP/DP layout; at a
different layout the weights load resharded and the optimizer starts fresh (logged), its fp32
main copies of the weights refreshed from the loaded ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing, parallel_state

from dtrpo_mega.checkpointing import load_model, save_model, sharded_weights

TRACKER = "latest_checkpointed_iteration.txt"


@dataclass
class Resumed:
    step: int
    optimizer_restored: bool
    path: Path


def _layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def latest_checkpoint(root: str | Path) -> Path | None:
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    path = Path(root) / tracker.read_text().strip()
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"{tracker} names {path.name}, which is incomplete (no trainer.json)")
    return path


def save_checkpoint(root: str | Path, step: int, model, optimizer, config: dict) -> Path:
    """Every rank calls it; returns the checkpoint folder once the tracker names it."""
    root, rank = Path(root), dist.get_rank()
    path = root / f"iter_{step:07d}"
    save_model(model, path / "model")
    if hasattr(optimizer, "sharded_state_dict"):
        dist_checkpointing.save(optimizer.sharded_state_dict(sharded_weights(model)), str(_mkdir(path / "optimizer")))
    state = {"layout": _layout(), "torch_rng": torch.get_rng_state(), "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else None}
    torch.save(state, path / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (path / "trainer.json").write_text(json.dumps({"step": step, "layout": _layout(), "config": config}, indent=2, default=str))
        tmp = root / (TRACKER + ".tmp")
        tmp.write_text(path.name + "\n")
        tmp.replace(root / TRACKER)
    dist.barrier()
    return path


def _mkdir(path: Path) -> Path:
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return path


def _refresh_main_params(optimizer) -> None:
    """megatron's mixed-precision optimizers keep fp32 main copies of the weights, taken when they
    were built; after weights are loaded without optimizer state, copy them in (as Megatron-LM's
    load_checkpoint does), or the first step writes the old weights back. torch AdamW (CPU) steps
    the parameters themselves and has none."""
    reload = getattr(getattr(optimizer, "optimizer", None), "reload_model_params", None)
    if reload is not None:
        reload()


def load_checkpoint(path: Path, model, optimizer) -> Resumed:
    """Weights at any layout; optimizer and RNG only where the layout is unchanged.

    The optimizer must already be built (its distributed optimizer over `model`).
    """
    load_model(model, path / "model")
    saved = json.loads((path / "trainer.json").read_text())
    same_layout = saved["layout"] == _layout()
    if same_layout:
        state = torch.load(path / f"rank_{dist.get_rank():05d}.pt", weights_only=True)
        torch.set_rng_state(state["torch_rng"])
        if hasattr(optimizer, "sharded_state_dict"):
            sharded = optimizer.sharded_state_dict(sharded_weights(model), is_loading=True)
            optimizer.optimizer.load_state_dict(dist_checkpointing.load(sharded, str(path / "optimizer")))
        else:
            optimizer.load_state_dict(state["optimizer"])
    else:
        _refresh_main_params(optimizer)
    return Resumed(step=saved["step"], optimizer_restored=same_layout, path=path)
