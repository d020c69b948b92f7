"""Which pairs each step trains on, in a layout-independent order.

Step t's global batch is a pure function of (seed, t): epoch e = t // steps_per_epoch, and the
pairs are a slice of epoch e's permutation. Data-parallel ranks take contiguous shares and split
them into micro-batches (`micro_batch_size` pairs each, or packed into rows of a token budget by
`RowBuilder.packed_micro_batches`); chosen and rejected of a pair always share a micro-batch.
Changing DP, the micro-batch size or packing regroups the same pairs, which the loss
normalization makes invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataOrder:
    num_pairs: int
    global_batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        steps = self.num_pairs // self.global_batch_size
        if steps == 0:
            raise ValueError(f"the dataset has {self.num_pairs} pairs, fewer than "
                             f"train.global_batch_size={self.global_batch_size}")
        return steps

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch(self, step: int) -> np.ndarray:
        """Dataset indices of step `step`'s global batch (the last partial batch of an epoch is dropped)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0xDA7A])).permutation(self.num_pairs)
        return order[k * self.global_batch_size : (k + 1) * self.global_batch_size]

    def local_pairs(self, step: int, dp_rank: int, dp_size: int) -> np.ndarray:
        """This data-parallel rank's contiguous share of the step's pairs."""
        return np.array_split(self.global_batch(step), dp_size)[dp_rank]

    def local_micro_batches(self, step: int, dp_rank: int, dp_size: int, micro_batch_size: int) -> list[np.ndarray]:
        share = self.local_pairs(step, dp_rank, dp_size)
        return [share[i : i + micro_batch_size] for i in range(0, len(share), micro_batch_size)]
