"""The dTRPO objective: weighted token log-ratios -> trajectory log-ratio estimates -> DPO-family loss.

Each pair has a chosen (role 0) and a rejected (role 1) sequence. For each sequence
    l_hat = sum_tokens weight * log pi_theta  -  (the same weighted sum under the reference)
(the weighted sums come from `ScoredRows.sequence_sums`), and per pair, with logits = l_hat_w - l_hat_l and h = beta * logits:
    sigmoid  -logsig(h) (1 - eps) - logsig(-h) eps      (eps = label_smoothing; 0: DPO)
    ipo      (logits - 1 / (2 beta))^2
    robust   (-logsig(h) (1 - eps) + logsig(-h) eps) / (1 - 2 eps)
    hinge    relu(1 - h)
plus `nll_weight` times the chosen response's estimated NLL per token, from the same forward.
Losses are returned as sums over pairs (the trainer adds the count of Megatron's
(sum, count, report)), so the global mean is exact whatever the DP / PP / CP / micro-batch split.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor


class LossType(str, Enum):
    SIGMOID = "sigmoid"
    IPO = "ipo"
    ROBUST = "robust"
    HINGE = "hinge"


@dataclass
class LossConfig:
    beta: float = 0.1
    loss_type: LossType = LossType.SIGMOID
    label_smoothing: float = 0.0
    nll_weight: float = 0.0

    def __post_init__(self):
        try:
            self.loss_type = LossType(self.loss_type)
        except ValueError:
            raise ValueError(f"loss.loss_type={self.loss_type!r}; choose from {[t.value for t in LossType]}") from None
        if self.beta <= 0:
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.nll_weight < 0:
            raise ValueError(f"loss.nll_weight must be >= 0, got {self.nll_weight}")


def pair_losses(logratio_chosen: Tensor, logratio_rejected: Tensor, cfg: LossConfig) -> Tensor:
    """Per-pair loss from the trajectory log-ratio estimates of chosen and rejected."""
    logits = logratio_chosen - logratio_rejected
    h, eps = cfg.beta * logits, cfg.label_smoothing
    if cfg.loss_type == LossType.SIGMOID:
        return -F.logsigmoid(h) * (1 - eps) - F.logsigmoid(-h) * eps
    if cfg.loss_type == LossType.IPO:
        return (logits - 1 / (2 * cfg.beta)) ** 2
    if cfg.loss_type == LossType.ROBUST:
        return (-F.logsigmoid(h) * (1 - eps) + F.logsigmoid(-h) * eps) / (1 - 2 * eps)
    return torch.relu(1 - h)


METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "nll")


def dtrpo_loss(policy_sums: Tensor, ref_sums: Tensor, response_lengths: Tensor, cfg: LossConfig) -> tuple[Tensor, dict]:
    """(sum of pair losses, summed TRL-named metrics) of some pairs.

    policy_sums, ref_sums: [pairs, 2] weighted log-prob sums of chosen and rejected under the
    policy and the reference; response_lengths: [pairs, 2] response tokens (for the per-token NLL).
    """
    logratios = policy_sums - ref_sums
    losses = pair_losses(logratios[:, 0], logratios[:, 1], cfg)
    nll = -policy_sums[:, 0] / response_lengths[:, 0]
    if cfg.nll_weight:
        losses = losses + cfg.nll_weight * nll
    rewards = cfg.beta * logratios.detach()
    report = {
        "loss": losses.detach().sum(),
        "rewards/chosen": rewards[:, 0].sum(),
        "rewards/rejected": rewards[:, 1].sum(),
        "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).double().sum(),
        "rewards/margins": (rewards[:, 0] - rewards[:, 1]).sum(),
        "logps/chosen": policy_sums[:, 0].detach().sum(),
        "logps/rejected": policy_sums[:, 1].detach().sum(),
        "nll": nll.detach().sum(),
        "pairs": torch.tensor(float(policy_sums.shape[0]), dtype=torch.float64),
    }
    return losses.sum(), report
