"""Training checkpoints: complete or absent, verified, resumable, reshardable for the model weights.

    CKPT/iter_0000040/model/             weights, megatron dist_checkpointing (any TP/PP on load)
    CKPT/iter_0000040/optimizer/         GPU: the distributed optimizer's sharded state
    CKPT/iter_0000040/rank_00003.pt      per rank: CPU optimizer state, torch RNG state, layout
                                         (the data and re-masking randomness is a pure function
                                         of seed, epoch and index, so it needs no state)
    CKPT/iter_0000040/trainer.json       step, layout, reference identity, config
    CKPT/iter_0000040/checksums.json     sha256 of every file (model/ has its own), verified on load
    CKPT/latest_checkpointed_iteration.txt
    CKPT/.lock                           held by the training job that writes here

The tracker file is replaced atomically only after every rank finished writing, so a save cut
short is never resumed from. Optimizer state is restored only at the same TP/PP/DP layout; at a
different layout the weights load resharded and the optimizer starts fresh (logged), its fp32
main copies of the weights refreshed from the loaded ones. A resume whose reference model would
differ from the one the checkpoint was trained against is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing

from dtrpo_mega.checkpoint.model import load_model, save_model, save_sharded, sharded_weights
from dtrpo_mega.checkpoint.integrity import reading, verify_manifest, write_manifest, writing

TRACKER = "latest_checkpointed_iteration.txt"
LOCK = ".lock"


@dataclass
class Resumed:
    step: int
    optimizer_restored: bool
    path: Path


def _layout(model) -> dict:
    """The TP/PP/DP/EP/expert-TP sizes of the groups `model` was built with (each rank's optimizer
    state is of its own shards)."""
    groups = model.pg_collection
    return {"tp": groups.tp.size(), "pp": groups.pp.size(), "dp": groups.dp.size(), "ep": groups.ep.size(),
            "etp": groups.expt_tp.size()}


class CheckpointLock:
    """One training job per checkpoint directory: rank 0 holds an exclusive lock on `CKPT/.lock`
    (released by the kernel when the process dies, however it dies) naming the holder."""

    def __init__(self, root: str | Path):
        self.path, self.file = Path(root) / LOCK, None

    def acquire(self) -> None:
        """Collective: every rank raises if another job holds the directory."""
        error = [None]
        if dist.get_rank() == 0:
            error[0] = self._take()
        dist.broadcast_object_list(error, src=0)
        if error[0]:
            raise ValueError(error[0])

    def _take(self) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "an unknown process"
            file.close()
            return (f"checkpoint.dir {self.path.parent} is in use by {holder} (lock {self.path}); stop that job or use "
                    "another checkpoint.dir")
        file.seek(0)
        file.truncate()
        job = os.environ.get("SLURM_JOB_ID")
        file.write(f"pid {os.getpid()} on {socket.gethostname()}{f', Slurm job {job}' if job else ''}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        self.file = file
        return None

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def latest_checkpoint(root: str | Path) -> Path | None:
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    path = Path(root) / tracker.read_text().strip()
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"{tracker} names {path.name}, which is incomplete (no trainer.json)")
    return path


def save_checkpoint(root: str | Path, step: int, model, optimizer, config: dict, reference: str | None = None) -> Path:
    """Every rank calls it; returns the checkpoint folder once the tracker names it.
    `reference`: the identity of the reference model the policy is trained against."""
    root, rank = Path(root), dist.get_rank()
    path = root / f"iter_{step:07d}"
    save_model(model, path / "model")
    if hasattr(optimizer, "sharded_state_dict"):
        save_sharded(optimizer.sharded_state_dict(sharded_weights(model)), _mkdir(path / "optimizer"))
    state = {"layout": _layout(model), "torch_rng": torch.get_rng_state(),
             "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else None}
    with writing(path / f"rank_{rank:05d}.pt"):
        torch.save(state, path / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        with writing(path / "trainer.json"):
            trainer = {"step": step, "layout": _layout(model), "reference": reference, "config": config}
            (path / "trainer.json").write_text(json.dumps(trainer, indent=2, default=str))
    dist.barrier()
    write_manifest(path)
    if rank == 0:
        with writing(root / TRACKER):
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


def load_checkpoint(path: Path, model, optimizer, reference: str | None = None, verify: bool = True) -> Resumed:
    """Weights at any layout; optimizer and RNG only where the layout is unchanged. Refuses a
    checkpoint trained against another reference than `reference` (when both are known).

    The optimizer must already be built (its distributed optimizer over `model`).
    """
    with reading(path / "trainer.json", "checkpoint"):
        saved = json.loads((path / "trainer.json").read_text())
    recorded = saved.get("reference")
    if reference is not None and recorded is not None and recorded != reference:
        raise ValueError(f"{path} was trained against the reference {recorded}, but this run's reference is "
                         f"{reference}: resuming would change the objective mid-run (set the same model.load / "
                         "reference.load / train.seed, or start in a new checkpoint.dir)")
    if verify:
        verify_manifest(path)
    load_model(model, path / "model", verify=verify)
    same_layout = {"ep": 1, "etp": 1, **saved["layout"]} == _layout(model)  # checkpoints before EP: 1
    if same_layout:
        rank_file = path / f"rank_{dist.get_rank():05d}.pt"
        with reading(rank_file, "checkpoint"):
            state = torch.load(rank_file, weights_only=True)
        torch.set_rng_state(state["torch_rng"])
        if hasattr(optimizer, "sharded_state_dict"):
            sharded = optimizer.sharded_state_dict(sharded_weights(model), is_loading=True)
            with reading(path / "optimizer", "checkpoint"):
                optimizer.optimizer.load_state_dict(dist_checkpointing.load(sharded, str(path / "optimizer")))
        else:
            optimizer.load_state_dict(state["optimizer"])
    else:
        _refresh_main_params(optimizer)
    return Resumed(step=saved["step"], optimizer_restored=same_layout, path=path)
