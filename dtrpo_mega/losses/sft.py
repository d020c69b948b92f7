"""Masked-diffusion SFT: the ELBO of the response under random block-wise masking.

Each sequence has one `random_mask` row (per block t ~ U(eps, 1), each response token masked
with probability t, every masked token weighted 1/t). A sequence's loss is its weighted NLL per
response token, `-sum weight * log pi_theta / L` (LLaDA's and BD3-LM's normalization); losses are
returned as sums over sequences with their count (Megatron's (sum, count, report)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dtrpo_mega.losses.preference import sequence_sums

def masked_diffusion_loss(policy_token_logps: Tensor, weights: Tensor, row_pair: Tensor, row_role: Tensor, response_lengths: Tensor) -> tuple[Tensor, Tensor, dict]:
    """(sum of per-sequence losses, number of sequences, summed metrics); only role 0 is scored."""
    num = response_lengths.shape[0]
    sums = sequence_sums(policy_token_logps, weights, row_pair, row_role, num)[:, 0]
    losses = -sums / response_lengths[:, 0]
    report = {
        "loss": losses.detach().sum(),
        "pairs": torch.tensor(float(num), dtype=torch.float64),
        "scored_tokens": (weights > 0).sum().double(),
    }
    return losses.sum(), torch.tensor(num, dtype=torch.int), report
