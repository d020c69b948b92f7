"""The last pipeline stage's loss functions over `ScoredRows`, in Megatron's (sum, count, report) form.

Each sequence's weighted log-prob sum is completed over the context-parallel group before the
(nonlinear) loss; its backward passes each rank's own share through unchanged, and the gradient
reduction over data x context parallel ranks adds the shares. The pair count is reported by
context-parallel rank 0 only, so megatron's count over that group stays the number of pairs.
"""

from __future__ import annotations

import torch

from megatron.core import parallel_state

from dtrpo_mega.losses.preference import LossConfig, dtrpo_loss
from dtrpo_mega.losses.sft import masked_diffusion_loss
from dtrpo_mega.parallel.context import all_reduce_sum_keep_grad
from dtrpo_mega.rows import ScoredRows


def context_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the context-parallel group; the backward keeps each rank's own gradient."""
    if parallel_state.get_context_parallel_world_size() == 1:
        return x
    return all_reduce_sum_keep_grad(x, parallel_state.get_context_parallel_group())


def sequence_logps(rows: ScoredRows, token_ce: torch.Tensor) -> torch.Tensor:
    """[pairs, 2] weighted log-prob sums of the whole rows (all context-parallel shares)."""
    return context_sum(rows.sequence_sums(-token_ce))


def _megatron(rows: ScoredRows, loss: torch.Tensor, report: dict):
    scored = context_sum(torch.tensor(float(rows.scored_tokens()), dtype=torch.float64, device=loss.device))
    report["scored_tokens"] = scored
    count = rows.num_pairs if parallel_state.get_context_parallel_rank() == 0 else 0
    return loss, torch.tensor(count, dtype=torch.int), report


def policy_loss(cfg: LossConfig, rows: ScoredRows, token_ce: torch.Tensor):
    """dTRPO (or a peer objective) from the vocab-parallel per-token cross-entropy."""
    loss, report = dtrpo_loss(sequence_logps(rows, token_ce), rows.ref_sums, rows.response_lengths, cfg)
    return _megatron(rows, loss, report)


def sft_loss(rows: ScoredRows, token_ce: torch.Tensor):
    loss, report = masked_diffusion_loss(sequence_logps(rows, token_ce), rows.response_lengths)
    return _megatron(rows, loss, report)


def reference_sums_loss(rows: ScoredRows, token_ce: torch.Tensor):
    """Forward-only 'loss' that reports the weighted reference sums of the rows."""
    sums = sequence_logps(rows, token_ce.detach())
    return token_ce.sum() * 0, torch.tensor(rows.num_pairs, dtype=torch.int), {"ref_sums": sums}
