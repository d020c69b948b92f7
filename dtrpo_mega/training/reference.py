"""The reference model's weighted log-prob sums, per (pair, role), for each micro-batch.

`resident`: a frozen copy of the reference in the same parallel layout runs forward-only on the
very same rows (tokens, layout, labels) as the policy.
`precomputed`: `tools/precompute_reference.py` stores the sums once, keyed by everything that
decides them; training refuses a cache whose key differs and says which fields differ. The
re-masking being a pure function of (seed, epoch, index) is what makes the cache valid.
Either way `with_reference` returns the rows with `ref_sums` set (on the last pipeline stage).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from dtrpo_mega.data.keyed import load_keyed
from dtrpo_mega.rows import ScoredRows
from dtrpo_mega.training.objectives import reference_sums_loss
from dtrpo_mega.training.step import forward_backward


class ResidentReference:
    def __init__(self, model):
        self.model = model.eval()
        for param in model.parameters():
            param.requires_grad_(False)

    def with_reference(self, micro_batches: list[ScoredRows]) -> list[ScoredRows]:
        """The micro-batches with the reference sums (last pipeline stage; elsewhere unchanged)."""
        with torch.no_grad():
            loss = partial(reference_sums_loss, self.model.pg_collection.cp)
            reports = forward_backward(self.model, micro_batches, loss, forward_only=True)
        if not reports:
            return micro_batches
        return [mb.with_reference(report["ref_sums"]) for mb, report in zip(micro_batches, reports)]


class PrecomputedReference:
    def __init__(self, path: str | Path, expected_key: dict):
        self.path = Path(path)
        self.ref_sums = load_keyed(path, expected_key, "reference.cache")["ref_sums"]

    def with_reference(self, micro_batches: list[ScoredRows]) -> list[ScoredRows]:
        out = []
        for mb in micro_batches:
            if mb.epoch >= self.ref_sums.shape[0]:
                raise ValueError(f"reference.cache {self.path} covers epochs 0..{self.ref_sums.shape[0] - 1}; training "
                                 f"reached epoch {mb.epoch}")
            out.append(mb.with_reference(self.ref_sums[mb.epoch, mb.pair_index]))
        return out
