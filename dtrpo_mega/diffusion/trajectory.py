"""Trajectories (the order the decoder reveals a response) and the one-step-per-block re-masking.

A trajectory assigns each response token the step, within its block, at which the decoder
reveals it; block b then has S_b steps. dTRPO samples one step s_b per block uniformly, re-masks
the tokens revealed at steps >= s_b (the state just before step s_b), and scores the tokens of
step s_b with weight S_b: sum_b S_b * Delta_b is unbiased for the exact trajectory log-ratio.

All randomness is a pure function of (seed, epoch, global sample index, role), never of rank,
layout or call order, so every pipeline stage, tensor-parallel peer, reference pass, reference
cache and resumed run sees the same states.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class SchedulerMode(str, Enum):
    INFERENCE_ALIGNED = "inference_aligned"
    LOGGED = "logged"
    RANDOM_MASK = "random_mask"


class RevealOrder(str, Enum):
    RANDOM = "random"  # theta-independent: the ratio reduction is exact
    REF_CONFIDENCE = "ref_confidence"  # descending reference confidence, frozen as data


class StepWeight(str, Enum):
    EXPLICIT = "explicit"  # weight S_b (unbiased)
    FOLDED = "folded"  # weight 1; S_b folded into beta (exact when every block has the same S)


class Reduction(str, Enum):
    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True)
class SchedulerConfig:
    mode: SchedulerMode = SchedulerMode.INFERENCE_ALIGNED
    tokens_per_step: int = 1
    sub_block_size: int | None = None  # None: the model's
    first_token_own_step: bool | None = None  # None: the model's logits_shift (Fast-dLLM v2)
    order: RevealOrder = RevealOrder.RANDOM
    step_weight: StepWeight = StepWeight.EXPLICIT
    reduction: Reduction = Reduction.SUM
    random_mask_eps: float = 1e-3

    def __post_init__(self):
        for name, enum in (("mode", SchedulerMode), ("order", RevealOrder), ("step_weight", StepWeight),
                           ("reduction", Reduction)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ValueError(f"scheduler.{name}={getattr(self, name)!r}; choose from "
                                 f"{[e.value for e in enum]}") from None
        if self.tokens_per_step < 1:
            raise ValueError(f"scheduler.tokens_per_step must be >= 1, got {self.tokens_per_step}")
        if not 0 < self.random_mask_eps < 1:
            raise ValueError(f"scheduler.random_mask_eps must be in (0, 1), got {self.random_mask_eps}")


def sample_rng(seed: int, epoch: int, index: int, role: int) -> np.random.Generator:
    """The generator of one sequence (role 0: chosen, 1: rejected)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, role]))


def response_blocks(prompt_len: int, length: int, block_size: int, origin: int = 0) -> list[range]:
    """Positions of the response tokens of each block that holds any; blocks start at `origin` mod
    block_size (`DiffusionSpec.origin`)."""
    first, end = (prompt_len - origin) // block_size, -(-(length - origin) // block_size)
    return [range(max(origin + b * block_size, prompt_len), min(origin + (b + 1) * block_size, length))
            for b in range(first, end)]


def inference_aligned_steps(
    prompt_len: int, length: int, block_size: int, sub_block_size: int, tokens_per_step: int,
    first_token_own_step: bool, rng: np.random.Generator, confidence: np.ndarray | None = None, origin: int = 0,
) -> np.ndarray:
    """Per-position step within its block (-1 for prompt), mirroring the deployed decoder.

    Inside a block: the block's first token alone (when `first_token_own_step` and the block
    starts with a response token), then sub-blocks left to right, `tokens_per_step` at a time in
    a random order or by descending `confidence` (per position).
    """
    steps = np.full(length, -1, dtype=np.int64)
    for block in response_blocks(prompt_len, length, block_size, origin):
        positions = list(block)
        step = 0
        if first_token_own_step and (positions[0] - origin) % block_size == 0:
            steps[positions[0]] = step
            step += 1
            positions = positions[1:]
        sub_blocks: dict[int, list[int]] = {}
        for p in positions:
            sub_blocks.setdefault((p - origin) // sub_block_size, []).append(p)
        for members in sub_blocks.values():
            members = np.asarray(members)
            if confidence is None:
                order = members[rng.permutation(len(members))]
            else:
                order = members[np.argsort(-confidence[members], kind="stable")]
            for i in range(0, len(order), tokens_per_step):
                steps[order[i : i + tokens_per_step]] = step
                step += 1
    return steps


def logged_steps(prompt_len: int, length: int, block_size: int, reveal_steps: np.ndarray,
                 origin: int = 0) -> np.ndarray:
    """Per-position step within its block from logged reveal steps (one per response token).

    Logged steps may count globally or per block; tokens revealed at the same logged step share
    a step, and distinct values are ranked 0..S_b-1 inside each block.
    """
    if len(reveal_steps) != length - prompt_len:
        raise ValueError(f"logged reveal steps: {len(reveal_steps)} values for {length - prompt_len} response tokens")
    steps = np.full(length, -1, dtype=np.int64)
    logged = np.concatenate([np.full(prompt_len, -1), np.asarray(reveal_steps, dtype=np.int64)])
    for block in response_blocks(prompt_len, length, block_size, origin):
        idx = np.asarray(block)
        _, ranks = np.unique(logged[idx], return_inverse=True)
        steps[idx] = ranks
    return steps


@dataclass
class Remasked:
    """One sequence's re-masked state and the weights of its scored tokens (all length n)."""

    noisy: np.ndarray  # z~: tokens, [M] where re-masked
    weights: np.ndarray  # per position: weight in the estimate (0 = not scored)
    context: np.ndarray | None = None  # what the clean half holds; None: the clean sequence


def steps_per_block(steps: np.ndarray, prompt_len: int, block_size: int, origin: int = 0) -> list[int]:
    """S_b for every block that holds response tokens."""
    return [int(steps[np.asarray(b)].max()) + 1 for b in response_blocks(prompt_len, len(steps), block_size, origin)]


def remask_at_steps(tokens: np.ndarray, steps: np.ndarray, prompt_len: int, block_size: int, mask_id: int,
                    cfg: SchedulerConfig, chosen: list[int], origin: int = 0) -> Remasked:
    """Block b at the state just before its step chosen[b]; that step's tokens scored with S_b."""
    noisy, weights = tokens.copy(), np.zeros(len(tokens), dtype=np.float64)
    blocks = response_blocks(prompt_len, len(tokens), block_size, origin)
    for block, s, num_steps in zip(blocks, chosen, steps_per_block(steps, prompt_len, block_size, origin), strict=True):
        idx = np.asarray(block)
        noisy[idx[steps[idx] >= s]] = mask_id
        scored = idx[steps[idx] == s]
        weight = num_steps if cfg.step_weight == StepWeight.EXPLICIT else 1.0
        weights[scored] = weight / (len(scored) if cfg.reduction == Reduction.MEAN else 1)
    return Remasked(noisy, weights)


def sample_steps(steps: np.ndarray, prompt_len: int, block_size: int, rng: np.random.Generator,
                 origin: int = 0) -> list[int]:
    """s_b ~ U{0..S_b-1} for every block."""
    return [int(rng.integers(n)) for n in steps_per_block(steps, prompt_len, block_size, origin)]


def remask_random(tokens: np.ndarray, prompt_len: int, block_size: int, mask_id: int, cfg: SchedulerConfig,
                  rng: np.random.Generator, origin: int = 0, one_t: bool = False) -> Remasked:
    """MDLM / BD3-LM style: per block (or, `one_t`, once for the whole response: LLaDA, SDAR) t ~ U(eps, 1),
    mask each token with probability t, and score every masked token with weight 1/t (the
    Rao-Blackwellized ELBO difference)."""
    noisy, weights = tokens.copy(), np.zeros(len(tokens), dtype=np.float64)
    groups = [range(prompt_len, len(tokens))] if one_t else response_blocks(prompt_len, len(tokens), block_size, origin)
    for group in groups:
        idx = np.asarray(group)
        t = cfg.random_mask_eps + (1 - cfg.random_mask_eps) * rng.random()
        masked = idx[rng.random(len(idx)) < t]
        noisy[masked] = mask_id
        weights[masked] = 1.0 / t / (max(len(masked), 1) if cfg.reduction == Reduction.MEAN else 1)
    return Remasked(noisy, weights)
