"""The rows a model scores: typed inputs of one micro-batch, shared by training, the reference,
precomputation, evaluation and the benchmarks.

A micro-batch holds whole pairs (chosen and rejected together). Each of its rows holds one
sequence's `[z~ ; y0]` sample or, packed or with a shared prompt, several one after another (each
its own segment with its own positions; a shared prompt is a segment of its own). Per token: the
label the logit there is scored against, the estimator weight (0: not scored) and which (pair
slot, role) sequence the token belongs to; the trajectory log-ratio estimate of a sequence is
`sum weight * log-prob` over its tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from dtrpo_mega.diffusion.mask import PAD_SEGMENT, TokenLayout
from dtrpo_mega.parallel.context import shard_layout, shard_tokens


@dataclass
class ScoredRows:
    tokens: Tensor  # [rows, s] model input ids
    layout: TokenLayout  # positions, halves and segments of the rows
    labels: Tensor  # [rows, s] targets of the per-token cross-entropy
    weights: Tensor  # [rows, s] float64 estimator weights; 0 where nothing is scored
    sequence: Tensor  # [rows, s] 2 * pair slot + role of the token's sequence (0 where weight is 0)
    pair_index: Tensor  # [pairs] dataset index of each pair slot
    response_lengths: Tensor  # [pairs, 2] float64 response tokens of chosen and rejected
    epoch: int
    ref_sums: Tensor | None = None  # [pairs, 2] the reference's weighted sums, once known

    @property
    def num_pairs(self) -> int:
        return self.pair_index.numel()

    def shared_prompts(self, row: int) -> set[int]:
        """The segments of `row` that are shared prompts (`data.share_prompt`), not samples."""
        lay = self.layout
        if lay.prompt_segments is None:
            return set()
        sharing = lay.prompt_segments[row] != lay.segments[row]
        return set(lay.prompt_segments[row][sharing].tolist())

    def num_samples(self) -> int:
        """`[z~ ; y0]` samples in the rows (a packed or shared-prompt row holds several, one per segment)."""
        segments = int(self.layout.segments.amax(dim=1).sum())
        return segments - sum(len(self.shared_prompts(r)) for r in range(self.tokens.shape[0]))

    def samples(self) -> list[tuple[int, int, int, Tensor]]:
        """(pair slot, role, row, token mask [s]) of every sample, row by row (whole rows only; a
        shared prompt is no sample's)."""
        out = []
        for r in range(self.tokens.shape[0]):
            prompts = self.shared_prompts(r)
            for segment in self.layout.segments[r].unique().tolist():
                if segment != PAD_SEGMENT and segment not in prompts:
                    mask = self.layout.segments[r] == segment
                    sequence = int(self.sequence[r][mask][0])
                    out.append((sequence // 2, sequence % 2, r, mask))
        return out

    def sequence_sums(self, token_values: Tensor) -> Tensor:
        """sum of weight * value over the tokens of each (pair, role): [pairs, 2] float64."""
        weighted = torch.where(self.weights != 0, token_values.double() * self.weights, 0.0)
        out = torch.zeros(self.num_pairs * 2, dtype=torch.float64, device=weighted.device)
        return out.index_add(0, self.sequence.flatten(), weighted.flatten()).view(self.num_pairs, 2)

    def scored_tokens(self) -> int:
        return int((self.weights != 0).sum())

    def padding_tokens(self) -> int:
        """Tokens of the rows that belong to no sequence."""
        return int((self.layout.segments == PAD_SEGMENT).sum())

    def context_shard(self, cp_rank: int, cp_size: int) -> "ScoredRows":
        """This context-parallel rank's tokens of every row (zigzag chunks; the layout keeps the
        whole rows and names this rank's queries and the all-gathered key order)."""
        shard = lambda t: shard_tokens(t, cp_rank, cp_size)  # noqa: E731
        return dataclasses.replace(
            self, tokens=shard(self.tokens), layout=shard_layout(self.layout, cp_rank, cp_size),
            labels=shard(self.labels), weights=shard(self.weights), sequence=shard(self.sequence),
        )

    def with_reference(self, ref_sums: Tensor) -> "ScoredRows":
        return dataclasses.replace(self, ref_sums=ref_sums)

    def to(self, device) -> "ScoredRows":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(
            self, tokens=move(self.tokens), layout=self.layout.to(device), labels=move(self.labels),
            weights=move(self.weights), sequence=move(self.sequence), pair_index=move(self.pair_index),
            response_lengths=move(self.response_lengths), ref_sums=move(self.ref_sums),
        )
