"""From preference pairs to micro-batches of `[z~ ; y0]` rows, in a layout-independent order.

Step t's global batch is a pure function of (seed, t): epoch e = t // steps_per_epoch, and the
pairs are a slice of epoch e's permutation. Data-parallel ranks take contiguous shares and split
them into micro-batches; chosen and rejected of a pair always share a micro-batch. Changing DP
or the micro-batch size regroups the same pairs, which the loss normalization makes invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dtrpo_mega.data import PreferencePair
from dtrpo_mega.diffusion.mask import MaskVariant, collate
from dtrpo_mega.diffusion.scoring import Objective, SequenceSpec, plan_rows, scoring_row
from dtrpo_mega.diffusion.trajectory import SchedulerConfig
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.training.reference import ConfidenceTable
from dtrpo_mega.training.step import MicroBatch


@dataclass(frozen=True)
class DataOrder:
    num_pairs: int
    global_batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        steps = self.num_pairs // self.global_batch_size
        if steps == 0:
            raise ValueError(f"the dataset has {self.num_pairs} pairs, fewer than train.global_batch_size={self.global_batch_size}")
        return steps

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch(self, step: int) -> np.ndarray:
        """Dataset indices of step `step`'s global batch (the last partial batch of an epoch is dropped)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0xDA7A])).permutation(self.num_pairs)
        return order[k * self.global_batch_size : (k + 1) * self.global_batch_size]

    def local_micro_batches(self, step: int, dp_rank: int, dp_size: int, micro_batch_size: int) -> list[np.ndarray]:
        share = np.array_split(self.global_batch(step), dp_size)[dp_rank]
        return [share[i : i + micro_batch_size] for i in range(0, len(share), micro_batch_size)]


@dataclass(frozen=True)
class RowBuilder:
    """Everything that decides the rows of a pair; the same for policy, reference and cache."""

    model: DLLMConfig
    scheduler: SchedulerConfig
    objective: Objective
    seed: int
    vrpo_samples: int = 8
    pad_to_multiple: int = 8
    confidence: ConfidenceTable | None = None  # reference confidences, for order=ref_confidence

    def sequences(self, pair: PreferencePair) -> list[SequenceSpec]:
        """Chosen and rejected; SFT scores the chosen (or completion) response only."""
        out = []
        roles = ((0, pair.chosen, pair.chosen_steps), (1, pair.rejected, pair.rejected_steps))
        for role, response, steps in roles if self.objective.is_preference else roles[:1]:
            tokens = np.concatenate([pair.prompt, response]).astype(np.int64)
            confidence = self.confidence.of(pair.index, role, len(pair.prompt)) if self.confidence is not None else None
            out.append(SequenceSpec(tokens, len(pair.prompt), pair.index, role, steps, confidence))
        return out

    def micro_batch(self, pairs: list[PreferencePair], epoch: int) -> MicroBatch:
        samples, labels, weights, row_pair, row_role = [], [], [], [], []
        lengths = torch.zeros(len(pairs), 2, dtype=torch.float64)
        for i, pair in enumerate(pairs):
            for seq in self.sequences(pair):
                lengths[i, seq.role] = len(seq.tokens) - seq.prompt_len
                for row in plan_rows(seq, self.model, self.scheduler, self.objective, self.seed, epoch, self.vrpo_samples):
                    sample, lab, w = scoring_row(seq.tokens, row, seq.prompt_len, self.model)
                    samples.append(sample), labels.append(lab), weights.append(w)
                    row_pair.append(i), row_role.append(seq.role)
        tokens, layout = collate(samples, MaskVariant.BLOCK_DIFFUSION, self.model.block_size, pad_id=self.model.mask_token_id, pad_to_multiple=self.pad_to_multiple)
        padded_labels = torch.zeros_like(tokens)
        padded_weights = torch.zeros(tokens.shape, dtype=torch.float64)
        for r, (lab, w) in enumerate(zip(labels, weights)):
            padded_labels[r, : lab.numel()], padded_weights[r, : w.numel()] = lab, w
        extra = {
            "weights": padded_weights,
            "row_pair": torch.tensor(row_pair),
            "row_role": torch.tensor(row_role),
            "response_lengths": lengths,
            "pair_index": torch.tensor([p.index for p in pairs]),
            "epoch": epoch,
        }
        return MicroBatch(tokens, layout, padded_labels, extra)
