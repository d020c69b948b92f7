"""Masked-diffusion SFT: each family's own loss over its random-mask rows.

The rows (`diffusion/scoring.py`, `SFTConvention`) already carry the family's weights (1/t or 1)
and masks; a sequence's weighted sum is `sum weight * log pi_theta` over its masked tokens. The
loss divides the negated sums by the family's normalizer:
- `sequence_length` (LLaDA): each sequence by its response length, then the mean over sequences;
- `response_tokens` (SDAR, Fast-dLLM v2) and `masked_tokens` (Dream): the global batch's sum by
  the global batch's response (or masked) tokens, passed as `sequences_per_unit` (the global
  sequences over those tokens) so that losses stay sums over sequences, as the trainer expects.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dtrpo_mega.diffusion.spec import SFTNormalizer


def masked_diffusion_loss(policy_sums: Tensor, response_lengths: Tensor,
                          normalizer: SFTNormalizer = SFTNormalizer.SEQUENCE_LENGTH,
                          sequences_per_unit: float | None = None) -> tuple[Tensor, dict]:
    """(sum of per-sequence losses, summed metrics); policy_sums [n, 2], only role 0 is scored."""
    if normalizer == SFTNormalizer.SEQUENCE_LENGTH:
        losses = -policy_sums[:, 0] / response_lengths[:, 0]
    else:
        if sequences_per_unit is None:
            raise ValueError(f"the {normalizer.value} SFT normalizer needs the global batch's sequences per unit")
        losses = -policy_sums[:, 0] * sequences_per_unit
    report = {"loss": losses.detach().sum(), "pairs": torch.tensor(float(policy_sums.shape[0]), dtype=torch.float64)}
    return losses.sum(), report
