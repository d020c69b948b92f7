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

import numpy as np
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


def save_keyed(path: str | Path, tensors: dict[str, torch.Tensor], key: dict) -> None:
    """safetensors file with the key that made it, written atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    tmp.replace(path)


def load_keyed(path: str | Path, expected_key: dict, what: str) -> dict[str, torch.Tensor]:
    """The file's tensors, or an error naming every key field that differs from this run's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; write it with tools/precompute_reference.py")
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["key"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    expected = json.loads(json.dumps(expected_key, sort_keys=True))
    differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    if differing:
        details = "; ".join(f"{k}: file {stored.get(k)!r} vs run {expected.get(k)!r}" for k in differing)
        raise ValueError(f"{what} {path} was made for a different run ({details})")
    return tensors


class PrecomputedReference:
    def __init__(self, path: str | Path, expected_key: dict):
        self.path = Path(path)
        self.ref_sums = load_keyed(path, expected_key, "reference.cache")["ref_sums"]

    def attach(self, micro_batches: list[MicroBatch]) -> None:
        for mb in micro_batches:
            epoch = mb.extra["epoch"]
            if epoch >= self.ref_sums.shape[0]:
                raise ValueError(f"reference.cache {self.path} covers epochs 0..{self.ref_sums.shape[0] - 1}; training reached epoch {epoch}")
            mb.extra["ref_sums"] = self.ref_sums[epoch, mb.extra["pair_index"]]


class ConfidenceTable:
    """Reference confidences of every response token (for `scheduler.order=ref_confidence`)."""

    def __init__(self, path: str | Path, expected_key: dict):
        tensors = load_keyed(path, expected_key, "data.ref_confidence")
        self.values, self.offsets = tensors["confidence"].numpy(), tensors["offsets"].numpy()

    def of(self, index: int, role: int, prompt_len: int) -> np.ndarray:
        """Per position of the sequence (prompt positions: 0, unused)."""
        start, stop = self.offsets[2 * index + role], self.offsets[2 * index + role + 1]
        return np.concatenate([np.zeros(prompt_len), self.values[start:stop]])
