"""A pair's scored samples, and one prompt for all of them (`data.share_prompt`).

Every sample of a pair (chosen and rejected; VRPO's n masks; the exact objective's steps) is a
`[z~ ; y0]` row whose clean copy starts with the same prompt. The clean copy of a block made only
of prompt sees that block and earlier ones, all prompt, and nothing else, so its keys and values
are the same in every sample. Shared, those blocks are one segment of the row, and each sample
keeps the rest (its noisy copy and its clean copy from the first unshared block, positions
unchanged) and sees the shared prompt through `TokenLayout.prompt_segments`, never another
sample: every logit sees the same keys with the same values as in the sample's own row.
Not shared: the block holding the prompt's end, whose clean prompt tokens see the response in
their block, and, in a shifted-logits family whose response starts a block, the block before it
too (its last logit scores the first response token). Plain full-attention rows
(`objective.scoring=per_block`) cannot share: there the prompt attends the response.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dtrpo_mega.diffusion.mask import PackedSample, noisy_start
from dtrpo_mega.diffusion.spec import DiffusionSpec


@dataclass
class ScoredSample:
    """One `[z~ ; y0]` sample of a sequence, with its labels and weights aligned to its logits."""

    sample: PackedSample
    labels: torch.Tensor
    weights: torch.Tensor
    role: int

    def __len__(self) -> int:
        return self.sample.tokens.numel()

    def select(self, keep: torch.Tensor) -> "ScoredSample":
        s = self.sample
        return ScoredSample(PackedSample(s.tokens[keep], s.positions[keep], s.noisy[keep], s.origin),
                            self.labels[keep], self.weights[keep], self.role)


@dataclass
class PairSamples:
    """What a pair puts into rows: its samples, each its own segment, after their shared prompt if any."""

    samples: list[ScoredSample]
    prompt: PackedSample | None = None  # the shared prompt: one segment that every sample sees

    def __len__(self) -> int:
        return (0 if self.prompt is None else self.prompt.tokens.numel()) + sum(len(s) for s in self.samples)


def shared_prompt_length(prompt_len, spec: DiffusionSpec):
    """Prompt positions the samples of a pair can share (ints or arrays): the blocks before the one
    holding the prompt's end, less one more block where a shifted-logits response starts a block."""
    start = noisy_start(prompt_len, spec.block_size, spec.origin(prompt_len))
    scores_last_prompt_logit = spec.logits_shift & spec.starts_block(prompt_len, prompt_len)
    return np.maximum(start - spec.block_size * scores_last_prompt_logit, 0)


def share_prompt(samples: list[ScoredSample], shared: int) -> PairSamples:
    """The samples with their first `shared` clean positions taken out into one shared prompt."""
    if shared == 0:
        return PairSamples(samples)
    prompt, rest = None, []
    for s in samples:
        head = s.sample.positions < shared  # clean copies only: a noisy copy starts at or after `shared`
        if bool(s.weights[head].any()):
            raise RuntimeError(f"a logit inside the first {shared} prompt positions is scored; they cannot be shared")
        mine = s.select(head).sample
        if prompt is None:
            prompt = mine
        elif not (torch.equal(mine.tokens, prompt.tokens) and torch.equal(mine.positions, prompt.positions)):
            raise RuntimeError("the samples of a pair differ in their first prompt positions; they cannot be shared")
        rest.append(s.select(~head))
    return PairSamples(rest, prompt)
