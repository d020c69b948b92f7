"""What the model scores for one sequence: rows of `[z~ ; y0]` with per-token labels and weights.

An objective is a plan of rows per sequence, and the trajectory log-ratio estimate is
`sum over rows and tokens of weight * (log pi_theta - log pi_ref)`:
- `dtrpo`: one row, one sampled step per block, weight S_b (the method);
- `vrpo`: n rows of random-mask states, weights 1/(n t) (LLaDA 1.5's Monte Carlo ELBO);
- `exact_trajectory`: row s holds every block at its step s, weight 1; the rows together score
  every decoding step once, so the sum is the exact trajectory log-ratio (cost: max_b S_b rows);
- `mean_field`: plain DPO with the dLLM treated as an all-at-once likelihood (d1's one-step
  mean-field estimate): one row with the whole response masked, every token scored with weight 1.
  Its clean half holds the masked response too, so every block sees earlier blocks as [M];
- `sft`: masked-diffusion SFT (no reference, chosen responses only): one `random_mask` row per
  sequence, weights 1/t (the ELBO), the training objective of the models themselves.

Full-attention families (LLaDA, Dream) are scored with the same block layout: at inference they
also see later blocks as [M], so for them one-pass scoring is the method doc's approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from dtrpo_mega.diffusion.mask import PackedSample, block_diffusion_sample
from dtrpo_mega.diffusion.trajectory import (
    Remasked,
    RevealOrder,
    SchedulerConfig,
    SchedulerMode,
    inference_aligned_steps,
    logged_steps,
    remask_at_sampled_steps,
    remask_random,
    sample_rng,
)
from dtrpo_mega.models.config import DLLMConfig


class Objective(str, Enum):
    DTRPO = "dtrpo"
    VRPO = "vrpo"
    EXACT_TRAJECTORY = "exact_trajectory"
    MEAN_FIELD = "mean_field"
    SFT = "sft"

    @property
    def is_preference(self) -> bool:
        return self != Objective.SFT


@dataclass
class SequenceSpec:
    """One response to score: clean tokens (prompt + response) and where the response starts."""

    tokens: np.ndarray
    prompt_len: int
    index: int  # global sample index
    role: int  # 0 chosen, 1 rejected
    reveal_steps: np.ndarray | None = None  # `logged` mode
    confidence: np.ndarray | None = None  # `ref_confidence` order, per position


def trajectory_steps(seq: SequenceSpec, model: DLLMConfig, sched: SchedulerConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-position step within its block, by the configured scheduler mode."""
    n = len(seq.tokens)
    if sched.mode == SchedulerMode.LOGGED:
        if seq.reveal_steps is None:
            raise ValueError(f"scheduler.mode=logged but sample {seq.index} carries no reveal steps")
        return logged_steps(seq.prompt_len, n, model.block_size, seq.reveal_steps)
    if sched.order == RevealOrder.REF_CONFIDENCE and seq.confidence is None:
        raise ValueError(f"scheduler.order=ref_confidence but sample {seq.index} has no reference confidences (data.ref_confidence)")
    first_own = model.logits_shift if sched.first_token_own_step is None else sched.first_token_own_step
    return inference_aligned_steps(
        seq.prompt_len, n, model.block_size, sched.sub_block_size or model.sub_block_size,
        sched.tokens_per_step, first_own, rng, seq.confidence,
    )


def plan_rows(seq: SequenceSpec, model: DLLMConfig, sched: SchedulerConfig, objective: Objective, seed: int, epoch: int, vrpo_samples: int = 8) -> list[Remasked]:
    """The re-masked rows of one sequence; a pure function of (seed, epoch, index, role)."""
    rng = sample_rng(seed, epoch, seq.index, seq.role)
    tokens, p, k, mask = seq.tokens, seq.prompt_len, model.block_size, model.mask_token_id
    if objective == Objective.SFT:
        return [remask_random(tokens, p, k, mask, sched, rng)]
    if objective == Objective.MEAN_FIELD:
        return [mean_field_row(tokens, p, mask)]
    if objective == Objective.VRPO:
        rows = [remask_random(tokens, p, k, mask, sched, rng) for _ in range(vrpo_samples)]
        for row in rows:
            row.weights /= vrpo_samples
        return rows
    if sched.mode == SchedulerMode.RANDOM_MASK:
        if objective != Objective.DTRPO:
            raise ValueError("objective=exact_trajectory needs a trajectory scheduler (inference_aligned or logged)")
        return [remask_random(tokens, p, k, mask, sched, rng)]
    steps = trajectory_steps(seq, model, sched, rng)
    if objective == Objective.DTRPO:
        return [remask_at_sampled_steps(tokens, steps, p, k, mask, sched, rng)]
    return exact_rows(tokens, steps, mask)


def exact_rows(tokens: np.ndarray, steps: np.ndarray, mask_id: int) -> list[Remasked]:
    """Row s: each block at the state before its step s (steps: per position, -1 for the prompt),
    scoring that step with weight 1."""
    rows, response = [], steps >= 0
    for s in range(int(steps.max()) + 1):
        noisy, weights = tokens.copy(), np.zeros(len(tokens))
        noisy[response & (steps >= s)] = mask_id
        weights[response & (steps == s)] = 1.0
        rows.append(Remasked(noisy, weights))
    return rows


def mean_field_row(tokens: np.ndarray, prompt_len: int, mask_id: int) -> Remasked:
    """The whole response masked in both halves, every response token scored with weight 1."""
    noisy, weights = tokens.copy(), np.zeros(len(tokens))
    noisy[prompt_len:] = mask_id
    weights[prompt_len:] = 1.0
    return Remasked(noisy, weights, context=noisy)


def logit_index(position: int, length: int, prompt_len: int, block_size: int, shift: bool) -> int:
    """Index in the `[z~ ; y0]` row of the logit that scores the token at `position`.

    Without shift: its own noisy copy. With shift (Fast-dLLM v2, Dream): the logit at position-1,
    taken from the noisy copy inside the same block, or from the clean copy of the previous block
    for a block's first token (the decoder's autoregressive first token).
    """
    start = (prompt_len // block_size) * block_size
    if not shift:
        return position - start
    if position % block_size:
        return position - 1 - start
    return (length - start) + position - 1


def scoring_row(clean: np.ndarray, row: Remasked, prompt_len: int, model: DLLMConfig) -> tuple[PackedSample, torch.Tensor, torch.Tensor]:
    """The `[z~ ; y0]` sample with labels and weights aligned to the logits that score them."""
    n, k = len(clean), model.block_size
    if model.logits_shift and prompt_len < 1:
        raise ValueError("a shifted-logits family needs at least one prompt token to score the first response token")
    context = clean if row.context is None else row.context
    sample = block_diffusion_sample(torch.from_numpy(row.noisy), torch.from_numpy(context), prompt_len, k)
    labels = torch.zeros(sample.tokens.numel(), dtype=torch.long)
    weights = torch.zeros(sample.tokens.numel(), dtype=torch.float64)
    for position in np.flatnonzero(row.weights):
        idx = logit_index(int(position), n, prompt_len, k, model.logits_shift)
        labels[idx], weights[idx] = int(clean[position]), float(row.weights[position])
    return sample, labels, weights

