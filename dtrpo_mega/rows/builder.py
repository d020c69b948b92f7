"""From preference pairs to `ScoredRows`: the rows of `[z~ ; y0]` samples a model scores.

The rows of a pair are a pure function of (seed, epoch, pair index, role), so the policy, the
reference, a precomputed cache, every parallel rank and a resumed run all build the same ones.
Unpacked, every sample is its own row, right-padded to a common length; packed, whole pairs
(all rows of chosen and rejected) share rows of a fixed token budget, each sample its own segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dtrpo_mega.data import PreferencePair
from dtrpo_mega.diffusion.mask import PAD_SEGMENT, MaskVariant, PackedSample, TokenLayout
from dtrpo_mega.diffusion.scoring import Objective, SequenceSpec, plan_rows, scoring_row
from dtrpo_mega.diffusion.spec import FirstTokenRule, LastBlock, ScoringLayout, SFTConvention
from dtrpo_mega.diffusion.trajectory import SchedulerConfig
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families import get_family
from dtrpo_mega.rows.confidence import ConfidenceTable
from dtrpo_mega.rows.packing import ItemTooLong, pack
from dtrpo_mega.rows.scored import ScoredRows


@dataclass
class ScoredSample:
    """One `[z~ ; y0]` sample of a sequence, with its labels and weights aligned to its logits."""

    sample: PackedSample
    labels: torch.Tensor
    weights: torch.Tensor
    role: int

    def __len__(self) -> int:
        return self.sample.tokens.numel()


@dataclass(frozen=True)
class RowBuilder:
    """Everything that decides the rows of a pair; the same for policy, reference and cache."""

    model: DLLMConfig
    scheduler: SchedulerConfig
    objective: Objective
    seed: int
    vrpo_samples: int = 8
    pad_to_multiple: int = 8  # unpacked rows are padded to a multiple of this
    confidence: ConfidenceTable | None = None  # reference confidences, for order=ref_confidence
    layout: ScoringLayout | None = None  # None: the family's
    sft: SFTConvention | None = None  # objective=sft: the training convention; None: the family's
    last_block: LastBlock = LastBlock.CUT  # responses without logged steps that end inside a block
    end_of_turn_id: int | None = None  # only responses ending with it are completed (truncated ones are not)
    fill_id: int | None = None  # last_block=fill: the token that fills the block

    def __post_init__(self):
        family = get_family(self.model.family)
        object.__setattr__(self, "layout", ScoringLayout(self.layout or family.scoring))
        object.__setattr__(self, "sft", self.sft or family.sft)
        if self.layout == ScoringLayout.PER_BLOCK and self.model.attention == MaskVariant.BLOCK_DIFFUSION:
            raise ValueError(f"objective.scoring=per_block is for full-attention families; {self.model.family} is "
                             "block-causal, so its one-pass rows are already exact")
        if self.last_block != LastBlock.CUT and self.end_of_turn_id is None:
            raise ValueError(f"data.last_block={self.last_block.value} needs the dataset's end-of-turn token id")
        if self.last_block == LastBlock.FILL and self.fill_id is None:
            raise ValueError("data.last_block=fill needs the family's fill token id in the dataset metadata "
                             "(tokenizer.fill_id): preprocess it again, or set data.last_block=cut")

    def completion(self, prompt_len: int, response: np.ndarray, logged: bool) -> int:
        """Slots after the response up to the end of its last block (0 unless completed, see `last_block`)."""
        if logged or self.last_block == LastBlock.CUT or not len(response) or int(response[-1]) != self.end_of_turn_id:
            return 0
        return self.model.diffusion.to_block_end(prompt_len, prompt_len + len(response))

    def response_length(self, pair: PreferencePair, role: int) -> int:
        """Scored response tokens of a sequence: the response, and a filled last block."""
        response, steps = (pair.chosen, pair.chosen_steps) if role == 0 else (pair.rejected, pair.rejected_steps)
        extra = (self.completion(len(pair.prompt), response, steps is not None) if self.last_block == LastBlock.FILL
                 else 0)
        return len(response) + extra

    def sequences(self, pair: PreferencePair) -> list[SequenceSpec]:
        """Chosen and rejected, their last blocks completed by `last_block`; SFT scores the chosen
        (or completion) response only."""
        out = []
        roles = ((0, pair.chosen, pair.chosen_steps), (1, pair.rejected, pair.rejected_steps))
        for role, response, steps in roles if self.objective.is_preference else roles[:1]:
            extra = self.completion(len(pair.prompt), response, steps is not None)
            filler = self.fill_id if self.last_block == LastBlock.FILL else self.model.mask_token_id
            tokens = np.concatenate([pair.prompt, response, np.full(extra, filler)]).astype(np.int64)
            confidence = self.confidence.of(pair.index, role, len(pair.prompt)) if self.confidence is not None else None
            if confidence is not None:  # a masked tail is never revealed: no confidence
                confidence = np.concatenate([confidence, np.zeros(len(tokens) - len(confidence))])
            tail = extra if self.last_block == LastBlock.MASK else 0
            out.append(SequenceSpec(tokens, len(pair.prompt), pair.index, role, steps, confidence, tail))
        return out

    def pair_samples(self, pair: PreferencePair, epoch: int) -> list[ScoredSample]:
        """Every sample the objective scores for this pair, chosen's first."""
        out, spec = [], self.model.diffusion
        first_token = self.sft.first_token if self.objective == Objective.SFT else FirstTokenRule.DECODER
        for seq in self.sequences(pair):
            for row in plan_rows(seq, spec, self.scheduler, self.objective, self.seed, epoch, self.vrpo_samples,
                                 self.layout, self.sft):
                sample, labels, weights = scoring_row(seq.tokens, row, seq.prompt_len, spec, self.layout, first_token)
                out.append(ScoredSample(sample, labels, weights, seq.role))
        return out

    def micro_batch(self, pairs: list[PreferencePair], epoch: int) -> ScoredRows:
        """One row per sample, right-padded to a multiple of `pad_to_multiple`."""
        return self.row_per_sample(pairs, [self.pair_samples(pair, epoch) for pair in pairs], epoch)

    def row_per_sample(self, pairs: list[PreferencePair], per_pair: list[list[ScoredSample]], epoch: int) -> ScoredRows:
        """`per_pair[i]`'s samples (pair i's), each its own row, in order."""
        rows = [[(slot, s)] for slot, samples in enumerate(per_pair) for s in samples]
        return self.assemble(pairs, rows, self.padded_length(max(len(s) for samples in per_pair for s in samples)),
                             epoch)

    def padded_length(self, tokens: int) -> int:
        return -(-tokens // self.pad_to_multiple) * self.pad_to_multiple

    def packed_micro_batches(self, pairs: list[PreferencePair], epoch: int, row_tokens: int) -> list[ScoredRows]:
        """Whole pairs packed into rows of at most `row_tokens` tokens, one row per micro-batch; a row
        is cut to its content rounded up to `pad_to_multiple`."""
        per_pair = [self.pair_samples(pair, epoch) for pair in pairs]
        try:
            groups = pack([sum(len(s) for s in samples) for samples in per_pair], row_tokens)
        except ItemTooLong as err:
            raise ValueError(f"train.micro_batch_tokens={row_tokens} cannot hold pair {pairs[err.item].index}, whose "
                             f"rows take {err.length} tokens together; raise train.micro_batch_tokens") from None
        out = []
        for group in groups:
            row = [(slot, s) for slot, i in enumerate(group) for s in per_pair[i]]
            length = min(row_tokens, self.padded_length(sum(len(s) for _, s in row)))
            out.append(self.assemble([pairs[i] for i in group], [row], length, epoch))
        return out

    def assemble(self, pairs: list[PreferencePair], rows: list[list[tuple[int, ScoredSample]]], length: int,
                 epoch: int) -> ScoredRows:
        """Rows of [length] tokens; row r holds `rows[r]`'s samples one after another, then padding."""
        shape = (len(rows), length)
        tokens = torch.full(shape, self.model.mask_token_id, dtype=torch.long)
        positions, segments, labels, sequence = (torch.zeros(shape, dtype=torch.long) for _ in range(4))
        origins = torch.zeros(shape, dtype=torch.long)
        noisy = torch.zeros(shape, dtype=torch.bool)
        weights = torch.zeros(shape, dtype=torch.float64)
        for r, samples in enumerate(rows):
            start = 0
            for segment, (slot, s) in enumerate(samples, start=PAD_SEGMENT + 1):
                span = slice(start, start + len(s))
                tokens[r, span], positions[r, span], noisy[r, span] = (
                    s.sample.tokens, s.sample.positions, s.sample.noisy)
                labels[r, span], weights[r, span], origins[r, span] = s.labels, s.weights, s.sample.origin
                segments[r, span], sequence[r, span] = segment, 2 * slot + s.role
                start += len(s)
        roles = (0, 1) if self.objective.is_preference else (0,)  # SFT scores the chosen response only
        lengths = torch.tensor([[self.response_length(p, role) if role in roles else 0 for role in (0, 1)]
                                for p in pairs],
                               dtype=torch.float64).reshape(len(pairs), 2)
        variant = MaskVariant.BLOCK_DIFFUSION if self.layout == ScoringLayout.ONE_PASS else self.model.attention
        layout = TokenLayout(positions, noisy, segments, variant, self.model.block_size, origins=origins)
        return ScoredRows(tokens, layout, labels, weights, sequence, torch.tensor([p.index for p in pairs]), lengths,
                          epoch)
