"""What the model scores for one sequence: rows with per-token labels and weights.

An objective is a plan of rows per sequence, and the trajectory log-ratio estimate is
`sum over rows and tokens of weight * (log pi_theta - log pi_ref)`:
- `dtrpo`: one sampled step per block, weight S_b (the method);
- `vrpo`: n rows of random-mask states, weights 1/(n t) (LLaDA 1.5's Monte Carlo ELBO);
- `exact_trajectory`: every block at every step, weight 1; the rows together score every
  decoding step once, so the sum is the exact trajectory log-ratio (cost: max_b S_b rows);
- `mean_field`: plain DPO with the dLLM treated as an all-at-once likelihood (d1's one-step
  mean-field estimate): the whole response masked, every token scored with weight 1. Its clean
  half holds the masked response too, so every block sees earlier blocks as [M];
- `sft`: masked-diffusion SFT (no reference, chosen responses only) by the family's own
  convention (`SFTConvention`: 1/t or not, one t per block or per response, complementary masks).

How rows are laid out (`ScoringLayout`):
- `one_pass`: a `[z~ ; y0]` row holds every block's state at once, each block seeing the clean
  earlier blocks. Exact for block-causal families; for full-attention families (LLaDA, Dream) an
  approximation, since at inference a block also sees every later block as [M];
- `per_block` (full attention): one plain row per scored block, earlier blocks clean, that block
  re-masked, later blocks [M]: what the semi-autoregressive decoder sees, exactly. Random-mask
  rows become one plain row with one t for the whole response (LLaDA's ELBO).
Blocks start where the family's decoder starts them (`DiffusionSpec.origin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from dtrpo_mega.diffusion.mask import PackedSample, block_diffusion_sample, noisy_start, plain_sample
from dtrpo_mega.diffusion.spec import DiffusionSpec, FirstTokenRule, ScoringLayout, SFTConvention, SFTNormalizer
from dtrpo_mega.diffusion.trajectory import (
    Remasked,
    RevealOrder,
    SchedulerConfig,
    SchedulerMode,
    inference_aligned_steps,
    logged_steps,
    remask_at_steps,
    remask_random,
    response_blocks,
    sample_rng,
    sample_steps,
)

# The SFT convention when none is given: LLaDA's ELBO (1/t, one t per block, per-sequence mean).
ELBO = SFTConvention(inverse_t=True, one_t=False, complementary=False, normalizer=SFTNormalizer.SEQUENCE_LENGTH)


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
    masked_tail: int = 0  # trailing positions that stay [M] in every state and are never scored (`last_block=mask`)

    @property
    def revealed_length(self) -> int:
        """Tokens up to the end of what the decoder reveals."""
        return len(self.tokens) - self.masked_tail


def trajectory_steps(seq: SequenceSpec, spec: DiffusionSpec, sched: SchedulerConfig,
                     rng: np.random.Generator) -> np.ndarray:
    """Per-position step within its block by the configured scheduler mode (-1: prompt, masked tail)."""
    n, origin = seq.revealed_length, spec.origin(seq.prompt_len)
    if sched.mode == SchedulerMode.LOGGED:
        if seq.reveal_steps is None:
            raise ValueError(f"scheduler.mode=logged but sample {seq.index} carries no reveal steps")
        steps = logged_steps(seq.prompt_len, n, spec.block_size, seq.reveal_steps, origin)
    else:
        if sched.order == RevealOrder.REF_CONFIDENCE and seq.confidence is None:
            raise ValueError(f"scheduler.order=ref_confidence but sample {seq.index} has no reference confidences "
                             "(data.ref_confidence)")
        first_own = spec.logits_shift if sched.first_token_own_step is None else sched.first_token_own_step
        steps = inference_aligned_steps(
            seq.prompt_len, n, spec.block_size, sched.sub_block_size or spec.sub_block_size,
            sched.tokens_per_step, first_own, rng, seq.confidence, origin,
        )
    return np.concatenate([steps, np.full(seq.masked_tail, -1, dtype=np.int64)])


def plan_rows(seq: SequenceSpec, spec: DiffusionSpec, sched: SchedulerConfig, objective: Objective, seed: int,
              epoch: int, vrpo_samples: int = 8, layout: ScoringLayout = ScoringLayout.ONE_PASS,
              sft: SFTConvention = ELBO) -> list[Remasked]:
    """The re-masked rows of one sequence; a pure function of (seed, epoch, index, role)."""
    rng = sample_rng(seed, epoch, seq.index, seq.role)
    tokens, p, k, mask, origin = (seq.tokens, seq.prompt_len, spec.block_size, spec.mask_token_id,
                                  spec.origin(seq.prompt_len))
    per_block = layout == ScoringLayout.PER_BLOCK
    revealed = tokens[: seq.revealed_length]

    def random_row(one_t: bool) -> Remasked:
        return _with_tail(remask_random(revealed, p, k, mask, sched, rng, origin, one_t=one_t or per_block),
                          seq.masked_tail, mask)

    if objective == Objective.SFT:
        return sft_rows(random_row(sft.one_t), seq, mask, sft)
    if objective == Objective.MEAN_FIELD:
        return [mean_field_row(tokens, p, mask, seq.revealed_length)]
    if objective == Objective.VRPO:
        rows = [random_row(False) for _ in range(vrpo_samples)]
        for row in rows:
            row.weights /= vrpo_samples
        return rows
    if sched.mode == SchedulerMode.RANDOM_MASK:
        if objective != Objective.DTRPO:
            raise ValueError("objective=exact_trajectory needs a trajectory scheduler (inference_aligned or logged)")
        return [random_row(False)]
    steps = trajectory_steps(seq, spec, sched, rng)
    if objective == Objective.DTRPO:
        rows = [remask_at_steps(tokens, steps, p, k, mask, sched, sample_steps(steps, p, k, rng, origin), origin)]
    else:
        rows = exact_rows(tokens, steps, mask)
    return ([r for row in rows for r in per_block_rows(row, tokens, response_blocks(p, len(tokens), k, origin), mask)]
            if per_block else rows)


def _with_tail(row: Remasked, tail: int, mask_id: int) -> Remasked:
    """A row of the revealed tokens, extended by the masked tail (unscored)."""
    if not tail:
        return row
    return Remasked(np.concatenate([row.noisy, np.full(tail, mask_id, dtype=row.noisy.dtype)]),
                    np.concatenate([row.weights, np.zeros(tail)]))


def sft_rows(row: Remasked, seq: SequenceSpec, mask_id: int, sft: SFTConvention) -> list[Remasked]:
    """A random-mask row weighted by the SFT convention, and the row of its complementary mask when
    the convention has one (every response token then scored exactly once, weight 1)."""
    masked = row.weights != 0
    if not sft.inverse_t:
        row.weights[masked] = 1.0
    if not sft.complementary:
        return [row]
    others = np.zeros(len(seq.tokens), dtype=bool)
    others[seq.prompt_len : seq.revealed_length] = True
    others &= ~masked
    noisy = seq.tokens.copy()
    noisy[others] = mask_id
    return [row, Remasked(noisy, others.astype(np.float64))]


def per_block_rows(row: Remasked, tokens: np.ndarray, blocks: list[range], mask_id: int) -> list[Remasked]:
    """One plain row per block that `row` scores: earlier blocks clean, the block in `row`'s state,
    later blocks [M]."""
    out = []
    for b, block in enumerate(blocks):
        idx = np.asarray(block)
        if not row.weights[idx].any():
            continue
        noisy, weights = tokens.copy(), np.zeros(len(tokens))
        noisy[idx], weights[idx] = row.noisy[idx], row.weights[idx]
        for later in blocks[b + 1 :]:
            noisy[np.asarray(later)] = mask_id
        out.append(Remasked(noisy, weights))
    return out


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


def mean_field_row(tokens: np.ndarray, prompt_len: int, mask_id: int, end: int) -> Remasked:
    """The whole response masked in both halves, its tokens before `end` scored with weight 1."""
    noisy, weights = tokens.copy(), np.zeros(len(tokens))
    noisy[prompt_len:] = mask_id
    weights[prompt_len:end] = 1.0
    return Remasked(noisy, weights, context=noisy)


def logit_index(position: int, length: int, prompt_len: int, spec: DiffusionSpec,
                first_token: FirstTokenRule = FirstTokenRule.DECODER) -> int:
    """Index in the `[z~ ; y0]` row of the logit that scores the token at `position`.

    Without shift: its own noisy copy. With shift (Fast-dLLM v2, Dream): the logit at position-1,
    taken from the noisy copy inside the same block; for a block's first token, from the clean
    copy of the previous block (`decoder`: the decoder's autoregressive first token) or from its
    noisy copy (`noisy`: Fast-dLLM v2's training loss). A previous block made only of prompt has
    no noisy copy in the row, and needs none: unmasked, it would see exactly what its clean copy sees.
    """
    start = noisy_start(prompt_len, spec.block_size, spec.origin(prompt_len))
    if not spec.logits_shift:
        return position - start
    if not spec.starts_block(position, prompt_len) or (first_token == FirstTokenRule.NOISY and position - 1 >= start):
        return position - 1 - start
    return (length - start) + position - 1


def scoring_row(
    clean: np.ndarray, row: Remasked, prompt_len: int, spec: DiffusionSpec,
    layout: ScoringLayout = ScoringLayout.ONE_PASS, first_token: FirstTokenRule = FirstTokenRule.DECODER,
) -> tuple[PackedSample, torch.Tensor, torch.Tensor]:
    """The row's sample (`[z~ ; y0]`, or plain for `per_block`) with labels and weights aligned to
    the logits that score them."""
    n, origin = len(clean), spec.origin(prompt_len)
    if spec.logits_shift and prompt_len < 1:
        raise ValueError("a shifted-logits family needs at least one prompt token to score the first response token")
    if layout == ScoringLayout.PER_BLOCK:
        sample = plain_sample(torch.from_numpy(row.noisy), origin)
        index = lambda position: position - int(spec.logits_shift)  # noqa: E731
    else:
        context = clean if row.context is None else row.context
        sample = block_diffusion_sample(torch.from_numpy(row.noisy), torch.from_numpy(context), prompt_len,
                                        spec.block_size, origin)
        index = lambda position: logit_index(position, n, prompt_len, spec, first_token)  # noqa: E731
    labels = torch.zeros(sample.tokens.numel(), dtype=torch.long)
    weights = torch.zeros(sample.tokens.numel(), dtype=torch.float64)
    for position in np.flatnonzero(row.weights):
        idx = index(int(position))
        labels[idx], weights[idx] = int(clean[position]), float(row.weights[position])
    return sample, labels, weights
