"""Pairwise-preference accuracy: does the policy's dTRPO reward rank chosen above rejected?

On held-out pairs, each sequence's reward is `beta * l_hat`, the trajectory log-ratio estimate
against the reference on the same re-masked rows as training builds them. The estimate is
random (one sampled step per block), so it is averaged over `draws` independent re-maskings
(epochs 0..draws-1) before comparing; ties count as not ranked, as in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dtrpo_mega.data import PreferenceDataset
from dtrpo_mega.eval.report import Outcome, TaskResult
from dtrpo_mega.rows import RowBuilder, ScoredRows


@dataclass
class PreferenceResult:
    pairs: int
    draws: int
    accuracy: float
    mean_margin: float  # beta * (l_hat_w - l_hat_l), averaged over pairs
    rewards: torch.Tensor  # [pairs, 2]: beta * l_hat of chosen and rejected, averaged over draws

    def task_result(self, name: str) -> TaskResult:
        """As an evaluation task: one outcome per pair (correct: chosen ranked above rejected)."""
        margins = self.rewards[:, 0] - self.rewards[:, 1]
        outcomes = [Outcome(str(i), "", f"{float(m):.6f}", bool(m > 0)) for i, m in enumerate(margins)]
        return TaskResult(name, "preference", outcomes)


def _sums(model, rows: ScoredRows) -> torch.Tensor:
    with torch.no_grad():
        return rows.sequence_sums(-model(rows.tokens, rows.layout, labels=rows.labels))


def preference_accuracy(policy, reference, dataset: PreferenceDataset, rows: RowBuilder, beta: float, draws: int = 4,
                        batch_pairs: int = 4) -> PreferenceResult:
    """Single process (TP = PP = 1): both models whole on this rank."""
    n = len(dataset)
    log_ratio = torch.zeros(n, 2, dtype=torch.float64)
    for epoch in range(draws):
        for start in range(0, n, batch_pairs):
            mb = rows.micro_batch([dataset[i] for i in range(start, min(start + batch_pairs, n))], epoch)
            log_ratio[start : start + mb.num_pairs] += _sums(policy, mb) - _sums(reference, mb)
    rewards = beta * log_ratio / draws
    margins = rewards[:, 0] - rewards[:, 1]
    return PreferenceResult(n, draws, float((margins > 0).double().mean()), float(margins.mean()), rewards)
