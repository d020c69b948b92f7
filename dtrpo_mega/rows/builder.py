"""From preference pairs to `ScoredRows`: the rows of `[z~ ; y0]` samples a model scores.

The rows of a pair are a pure function of (seed, epoch, pair index, role), so the policy, the
reference, a precomputed cache, every parallel rank and a resumed run all build the same ones.
Unpacked, every sample is its own row, right-padded to a common length, or with a shared prompt
(`share_prompt`, `rows/samples.py`) every pair is one row; packed, whole pairs (all rows of chosen
and rejected) share rows of a fixed token budget, each sample its own segment.
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
from dtrpo_mega.rows.samples import PairSamples, ScoredSample, share_prompt, shared_prompt_length
from dtrpo_mega.rows.scored import ScoredRows


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
    share_prompt: bool | None = None  # a pair's samples in one row, its prompt once; None: wherever rows are one-pass

    def __post_init__(self):
        family = get_family(self.model.family)
        object.__setattr__(self, "layout", ScoringLayout(self.layout or family.scoring))
        object.__setattr__(self, "sft", self.sft or family.sft)
        one_pass = self.layout == ScoringLayout.ONE_PASS
        object.__setattr__(self, "share_prompt", one_pass if self.share_prompt is None else self.share_prompt)
        if self.layout == ScoringLayout.PER_BLOCK and self.model.attention == MaskVariant.BLOCK_DIFFUSION:
            raise ValueError(f"objective.scoring=per_block is for full-attention families; {self.model.family} is "
                             "block-causal, so its one-pass rows are already exact")
        if self.share_prompt and not one_pass:
            raise ValueError("data.share_prompt=true needs one-pass rows: in objective.scoring=per_block rows the "
                             "prompt attends the response, so no two rows see the same prompt")
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

    def pair_rows(self, pair: PreferencePair, epoch: int) -> PairSamples:
        """The pair's samples, after their shared prompt with `share_prompt`."""
        samples = self.pair_samples(pair, epoch)
        if not self.share_prompt:
            return PairSamples(samples)
        return share_prompt(samples, int(shared_prompt_length(len(pair.prompt), self.model.diffusion)))

    def micro_batch(self, pairs: list[PreferencePair], epoch: int) -> ScoredRows:
        """One row per sample, or per pair where its samples share a prompt (`share_prompt`),
        right-padded to a multiple of `pad_to_multiple`."""
        rows = []
        for slot, pair in enumerate(pairs):
            item = self.pair_rows(pair, epoch)
            rows += [[(slot, item)]] if item.prompt is not None else [[(slot, PairSamples([s]))] for s in item.samples]
        return self.assemble(pairs, rows, self.padded_length(max(len(item) for [(_, item)] in rows)), epoch)

    def row_per_sample(self, pairs: list[PreferencePair], per_pair: list[list[ScoredSample]], epoch: int) -> ScoredRows:
        """`per_pair[i]`'s samples (pair i's), each its own row, in order."""
        rows = [[(slot, PairSamples([s]))] for slot, samples in enumerate(per_pair) for s in samples]
        return self.assemble(pairs, rows, self.padded_length(max(len(s) for samples in per_pair for s in samples)),
                             epoch)

    def padded_length(self, tokens: int) -> int:
        return -(-tokens // self.pad_to_multiple) * self.pad_to_multiple

    def packed_micro_batches(self, pairs: list[PreferencePair], epoch: int, row_tokens: int) -> list[ScoredRows]:
        """Whole pairs packed into rows of at most `row_tokens` tokens, one row per micro-batch; a row
        is cut to its content rounded up to `pad_to_multiple`."""
        per_pair = [self.pair_rows(pair, epoch) for pair in pairs]
        try:
            groups = pack([len(item) for item in per_pair], row_tokens)
        except ItemTooLong as err:
            raise ValueError(f"train.micro_batch_tokens={row_tokens} cannot hold pair {pairs[err.item].index}, whose "
                             f"rows take {err.length} tokens together; raise train.micro_batch_tokens") from None
        out = []
        for group in groups:
            row = [(slot, per_pair[i]) for slot, i in enumerate(group)]
            length = min(row_tokens, self.padded_length(sum(len(item) for _, item in row)))
            out.append(self.assemble([pairs[i] for i in group], [row], length, epoch))
        return out

    def assemble(self, pairs: list[PreferencePair], rows: list[list[tuple[int, PairSamples]]], length: int,
                 epoch: int) -> ScoredRows:
        """Rows of [length] tokens; row r holds `rows[r]`'s pairs (slot, samples) one after another, then padding."""
        shape = (len(rows), length)
        tokens = torch.full(shape, self.model.mask_token_id, dtype=torch.long)
        positions, segments, labels, sequence, origins, prompts = (torch.zeros(shape, dtype=torch.long)
                                                                   for _ in range(6))
        noisy = torch.zeros(shape, dtype=torch.bool)
        weights = torch.zeros(shape, dtype=torch.float64)

        def place(r: int, start: int, segment: int, sample: PackedSample, prompt_segment: int) -> slice:
            span = slice(start, start + sample.tokens.numel())
            tokens[r, span], positions[r, span], noisy[r, span] = sample.tokens, sample.positions, sample.noisy
            origins[r, span], segments[r, span], prompts[r, span] = sample.origin, segment, prompt_segment
            return span

        for r, items in enumerate(rows):
            start, segment = 0, PAD_SEGMENT
            for slot, item in items:
                prompt_segment = None
                if item.prompt is not None:
                    segment += 1
                    start, prompt_segment = place(r, start, segment, item.prompt, segment).stop, segment
                for s in item.samples:
                    segment += 1
                    span = place(r, start, segment, s.sample, prompt_segment or segment)
                    labels[r, span], weights[r, span], sequence[r, span] = s.labels, s.weights, 2 * slot + s.role
                    start = span.stop
        roles = (0, 1) if self.objective.is_preference else (0,)  # SFT scores the chosen response only
        lengths = torch.tensor([[self.response_length(p, role) if role in roles else 0 for role in (0, 1)]
                                for p in pairs],
                               dtype=torch.float64).reshape(len(pairs), 2)
        variant = MaskVariant.BLOCK_DIFFUSION if self.layout == ScoringLayout.ONE_PASS else self.model.attention
        layout = TokenLayout(positions, noisy, segments, variant, self.model.block_size, origins=origins,
                             prompt_segments=prompts)
        return ScoredRows(tokens, layout, labels, weights, sequence, torch.tensor([p.index for p in pairs]), lengths,
                          epoch)
