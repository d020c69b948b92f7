"""Masked-diffusion SFT: the ELBO of the response under random block-wise masking.

Each sequence has one `random_mask` row (per block t ~ U(eps, 1), each response token masked
with probability t, every masked token weighted 1/t). A sequence's loss is its weighted NLL per
response token, `-sum weight * log pi_theta / L` (LLaDA's and BD3-LM's normalization); losses are
returned as sums over sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_diffusion_loss(policy_sums: Tensor, response_lengths: Tensor) -> tuple[Tensor, dict]:
    """(sum of per-sequence losses, summed metrics); policy_sums [n, 2], only role 0 is scored."""
    losses = -policy_sums[:, 0] / response_lengths[:, 0]
    report = {"loss": losses.detach().sum(), "pairs": torch.tensor(float(policy_sums.shape[0]), dtype=torch.float64)}
    return losses.sum(), report
