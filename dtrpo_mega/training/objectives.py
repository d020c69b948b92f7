"""The last pipeline stage's loss functions over `ScoredRows`, in Megatron's (sum, count, report) form.

Each sequence's weighted log-prob sum is completed over the context-parallel group before the
(nonlinear) loss; its backward passes each rank's own share through unchanged, and the gradient
reduction over data x context parallel ranks adds the shares. The pair count is reported by
context-parallel rank 0 only, so megatron's count over that group stays the number of pairs.
The loss functions take the CP group first (bound with `functools.partial` before the schedule).
"""

from __future__ import annotations

import torch

import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

from dtrpo_mega.diffusion.spec import SFTConvention, SFTNormalizer
from dtrpo_mega.losses.preference import LossConfig, dtrpo_loss
from dtrpo_mega.losses.sft import masked_diffusion_loss
from dtrpo_mega.parallel.context import all_reduce_sum_keep_grad
from dtrpo_mega.parallel.runtime import comm_device
from dtrpo_mega.rows import ScoredRows


def context_sum(x: torch.Tensor, cp_group: dist.ProcessGroup) -> torch.Tensor:
    """Sum over the context-parallel group; the backward keeps each rank's own gradient."""
    if cp_group.size() == 1:
        return x
    return all_reduce_sum_keep_grad(x, cp_group)


def sequence_logps(rows: ScoredRows, token_ce: torch.Tensor, cp_group: dist.ProcessGroup) -> torch.Tensor:
    """[pairs, 2] weighted log-prob sums of the whole rows (all context-parallel shares)."""
    return context_sum(rows.sequence_sums(-token_ce), cp_group)


def _megatron(rows: ScoredRows, loss: torch.Tensor, report: dict, cp_group: dist.ProcessGroup):
    scored = context_sum(torch.tensor(float(rows.scored_tokens()), dtype=torch.float64, device=loss.device), cp_group)
    report["scored_tokens"] = scored
    count = rows.num_pairs if cp_group.rank() == 0 else 0
    return loss, torch.tensor(count, dtype=torch.int), report


def sequences_per_unit(micro: list[ScoredRows], unit: SFTNormalizer, groups: ProcessGroupCollection) -> float:
    """The global batch's scored sequences over its response tokens (`response_tokens`, chosen
    responses) or its masked tokens (`masked_tokens`): the same on every rank of the step
    (summed over `groups.cp` and `groups.dp`)."""
    local = [sum(mb.num_pairs for mb in micro), 0.0]
    if unit == SFTNormalizer.MASKED_TOKENS:
        local[1] = sum(mb.scored_tokens() for mb in micro)  # this rank's context-parallel share
    else:
        local[1] = sum(float(mb.response_lengths[:, 0].sum()) for mb in micro)
    totals = torch.tensor(local, dtype=torch.float64, device=comm_device())
    if unit == SFTNormalizer.MASKED_TOKENS and groups.cp.size() > 1:
        tokens = totals[1:].clone()
        dist.all_reduce(tokens, group=groups.cp)
        totals[1:] = tokens
    dist.all_reduce(totals, group=groups.dp)
    return float(totals[0] / totals[1])


def policy_loss(cfg: LossConfig, pairs_per_chosen_token: float | None, cp_group: dist.ProcessGroup, rows: ScoredRows,
                token_ce: torch.Tensor):
    """dTRPO (or a peer objective) from the vocab-parallel per-token cross-entropy."""
    logps = sequence_logps(rows, token_ce, cp_group)
    loss, report = dtrpo_loss(logps, rows.ref_sums, rows.response_lengths, cfg, pairs_per_chosen_token)
    return _megatron(rows, loss, report, cp_group)


def sft_loss(convention: SFTConvention, per_unit: float | None, cp_group: dist.ProcessGroup, rows: ScoredRows,
             token_ce: torch.Tensor):
    """Masked-diffusion SFT by the family's convention; `per_unit`: `sequences_per_unit` of the step."""
    logps = sequence_logps(rows, token_ce, cp_group)
    loss, report = masked_diffusion_loss(logps, rows.response_lengths, convention.normalizer, per_unit)
    return _megatron(rows, loss, report, cp_group)


def reference_sums_loss(cp_group: dist.ProcessGroup, rows: ScoredRows, token_ce: torch.Tensor):
    """Forward-only 'loss' that reports the weighted reference sums of the rows."""
    sums = sequence_logps(rows, token_ce.detach(), cp_group)
    return token_ce.sum() * 0, torch.tensor(rows.num_pairs, dtype=torch.int), {"ref_sums": sums}
