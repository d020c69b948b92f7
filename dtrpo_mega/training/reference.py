"""The reference model's weighted log-prob sums, per (pair, role), for each micro-batch.

`resident`: a frozen copy of the reference in the same parallel layout runs forward-only on the
very same micro-batches (tokens, layout, labels) as the policy.
`precomputed`: `tools/precompute_reference.py` stores the sums once, keyed by everything that
decides them; training refuses a cache whose key differs and says which fields differ. The
re-masking being a pure function of (seed, epoch, index) is what makes the cache valid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dtrpo_mega.losses.preference import sequence_sums
from dtrpo_mega.training.step import MicroBatch, forward_backward


def reference_sums_loss(mb: MicroBatch, token_ce: torch.Tensor):
    """Forward-only 'loss' that reports the weighted reference sums of the micro-batch."""
    num_pairs = len(mb.extra["pair_index"])
    sums = sequence_sums(-token_ce.detach(), mb.extra["weights"], mb.extra["row_pair"], mb.extra["row_role"], num_pairs)
    return token_ce.sum() * 0, torch.tensor(num_pairs, dtype=torch.int), {"ref_sums": sums}


class ResidentReference:
    def __init__(self, model):
        self.model = model.eval()
        for param in model.parameters():
            param.requires_grad_(False)

    def attach(self, micro_batches: list[MicroBatch]) -> None:
        """Set `extra["ref_sums"]` on every micro-batch (last pipeline stage)."""
        with torch.no_grad():
            reports = forward_backward(self.model, micro_batches, reference_sums_loss, forward_only=True)
        for mb, report in zip(micro_batches, reports):
            mb.extra["ref_sums"] = report["ref_sums"]


def files_digest(path: str | Path) -> str:
    """sha256 over a checkpoint folder's file names and contents (independent of the load layout)."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_cache(path: str | Path, ref_sums: torch.Tensor, key: dict) -> None:
    """ref_sums: [epochs, pairs, 2] float64, written atomically with its key."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({"ref_sums": ref_sums.contiguous()}, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    tmp.replace(path)


class PrecomputedReference:
    def __init__(self, path: str | Path, expected_key: dict):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference.cache={path} does not exist; write it with tools/precompute_reference.py")
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads(f.metadata()["key"])
            self.ref_sums = f.get_tensor("ref_sums")
        expected = json.loads(json.dumps(expected_key, sort_keys=True))
        differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        if differing:
            details = "; ".join(f"{k}: cache {stored.get(k)!r} vs run {expected.get(k)!r}" for k in differing)
            raise ValueError(f"reference cache {path} was made for a different run ({details})")
        self.path = path

    def attach(self, micro_batches: list[MicroBatch]) -> None:
        for mb in micro_batches:
            epoch = mb.extra["epoch"]
            if epoch >= self.ref_sums.shape[0]:
                raise ValueError(f"reference cache {self.path} covers epochs 0..{self.ref_sums.shape[0] - 1}; training reached epoch {epoch}")
            mb.extra["ref_sums"] = self.ref_sums[epoch, mb.extra["pair_index"]]
