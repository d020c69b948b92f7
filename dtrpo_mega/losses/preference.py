"""The dTRPO objective: weighted token log-ratios -> trajectory log-ratio estimates -> DPO-family loss.

Each pair has a chosen (role 0) and a rejected (role 1) sequence. For each sequence
    l_hat = sum_tokens weight * log pi_theta  -  (the same weighted sum under the reference)
(the weighted sums come from `ScoredRows.sequence_sums`), and per pair, with
logits = l_hat_w - l_hat_l and h = beta * logits:
    sigmoid  -logsig(h) (1 - eps) - logsig(-h) eps      (eps = label_smoothing; 0: DPO)
    ipo      (l_hat_w / L_w - l_hat_l / L_l - 1 / (2 beta))^2   (L: response tokens; TRL's and the
             IPO authors' length normalization; `ipo_length_normalized=false`: logits unnormalized)
    robust   (-logsig(h) (1 - eps) + logsig(-h) eps) / (1 - 2 eps)
    hinge    relu(1 - h)
plus `nll_weight` times the chosen responses' estimated NLL: per token over the whole global batch
(`nll_normalization=batch_tokens`, TRL's `sft` loss term), or per token of each response, then per
pair (`sequence`). Losses are returned as sums over pairs (the trainer adds the count of
Megatron's (sum, count, report)), so the global mean is exact whatever the DP / PP / CP /
micro-batch split. Differences from TRL's DPOTrainer are listed in docs/training.md.
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


class NLLNormalization(str, Enum):
    BATCH_TOKENS = "batch_tokens"  # sum over the global batch's chosen responses / their tokens (TRL)
    SEQUENCE = "sequence"  # per chosen response: its NLL / its tokens; then per pair


@dataclass
class LossConfig:
    beta: float = 0.1
    loss_type: LossType = LossType.SIGMOID
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    nll_normalization: NLLNormalization = NLLNormalization.BATCH_TOKENS
    ipo_length_normalized: bool = True

    def __post_init__(self):
        for name, enum in (("loss_type", LossType), ("nll_normalization", NLLNormalization)):
            try:
                setattr(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ValueError(f"loss.{name}={getattr(self, name)!r}; choose from "
                                 f"{[t.value for t in enum]}") from None
        if self.beta <= 0:
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.nll_weight < 0:
            raise ValueError(f"loss.nll_weight must be >= 0, got {self.nll_weight}")


def pair_losses(logratios: Tensor, response_lengths: Tensor, cfg: LossConfig) -> Tensor:
    """Per-pair loss from the trajectory log-ratio estimates [pairs, 2] of chosen and rejected."""
    logits = logratios[:, 0] - logratios[:, 1]
    h, eps = cfg.beta * logits, cfg.label_smoothing
    if cfg.loss_type == LossType.SIGMOID:
        return -F.logsigmoid(h) * (1 - eps) - F.logsigmoid(-h) * eps
    if cfg.loss_type == LossType.IPO:
        if cfg.ipo_length_normalized:
            per_token = logratios / response_lengths.clamp(min=1)
            logits = per_token[:, 0] - per_token[:, 1]
        return (logits - 1 / (2 * cfg.beta)) ** 2
    if cfg.loss_type == LossType.ROBUST:
        return (-F.logsigmoid(h) * (1 - eps) + F.logsigmoid(-h) * eps) / (1 - 2 * eps)
    return torch.relu(1 - h)


METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "nll")


def dtrpo_loss(policy_sums: Tensor, ref_sums: Tensor, response_lengths: Tensor, cfg: LossConfig,
               pairs_per_chosen_token: float | None = None) -> tuple[Tensor, dict]:
    """(sum of pair losses, summed TRL-named metrics) of some pairs.

    policy_sums, ref_sums: [pairs, 2] weighted log-prob sums of chosen and rejected under the
    policy and the reference; response_lengths: [pairs, 2] response tokens (IPO, the NLL).
    pairs_per_chosen_token: the global batch's pairs over its chosen tokens, for the batch-token
    NLL (None: these pairs' own).
    """
    logratios = policy_sums - ref_sums
    losses = pair_losses(logratios, response_lengths, cfg)
    if cfg.nll_normalization == NLLNormalization.SEQUENCE:
        nll = -policy_sums[:, 0] / response_lengths[:, 0]
    else:
        scale = (pairs_per_chosen_token if pairs_per_chosen_token is not None
                 else len(policy_sums) / float(response_lengths[:, 0].sum()))
        nll = -policy_sums[:, 0] * scale
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
