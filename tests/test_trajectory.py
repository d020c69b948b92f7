"""Trajectory structure, re-masking rules and row plans of the scheduler modes."""

import numpy as np
import pytest
import torch

from dtrpo_mega.diffusion.mask import MaskVariant, block_diffusion_sample
from dtrpo_mega.diffusion.spec import BlockAlignment, DiffusionSpec, FirstTokenRule
from dtrpo_mega.diffusion.scoring import Objective, SequenceSpec, logit_index, plan_rows, trajectory_steps
from dtrpo_mega.diffusion.trajectory import (
    SchedulerConfig,
    inference_aligned_steps,
    logged_steps,
    remask_at_steps,
    remask_random,
    response_blocks,
    sample_rng,
    steps_per_block,
)
from dtrpo_mega.models.families import model_config

MASK = 999


def test_fast_dllm_v2_structure_first_token_then_sub_blocks_left_to_right():
    # block 8, sub-block 4, prompt 3, length 20: blocks [3..7], [8..15], [16..19]
    steps = inference_aligned_steps(3, 20, 8, 4, 1, True, np.random.default_rng(0))
    assert (steps[:3] == -1).all()
    # block 0 starts inside the prompt: no own first step; sub-blocks [3] then [4..7]
    assert steps[3] == 0 and sorted(steps[4:8]) == [1, 2, 3, 4]
    # block 1: its first token alone, then [9..11], then [12..15]
    assert steps[8] == 0 and sorted(steps[9:12]) == [1, 2, 3] and sorted(steps[12:16]) == [4, 5, 6, 7]
    assert steps[16] == 0 and sorted(steps[17:20]) == [1, 2, 3]
    assert steps_per_block(steps, 3, 8) == [5, 8, 4]


def test_tokens_per_step_and_confidence_order():
    confidence = np.array([0, 0, 0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    steps = inference_aligned_steps(2, 8, 8, 8, 2, False, np.random.default_rng(0), confidence)
    # one sub-block [2..7] by descending confidence, two tokens a step: (3, 5), (4, 7), (6, 2)
    assert steps.tolist() == [-1, -1, 2, 0, 1, 0, 2, 1]


def test_logged_steps_rank_within_blocks():
    # global reveal steps of 6 response tokens (prompt 2, block 4): blocks [2, 3] and [4..7]
    steps = logged_steps(2, 8, 4, np.array([7, 3, 10, 10, 12, 11]))
    assert steps.tolist() == [-1, -1, 1, 0, 0, 0, 2, 1]
    with pytest.raises(ValueError, match="5 values for 6 response tokens"):
        logged_steps(2, 8, 4, np.arange(5))


def test_remasking_never_touches_the_prompt_and_scores_one_step_per_block():
    tokens = np.arange(100, 120)
    steps = inference_aligned_steps(5, 20, 4, 4, 1, False, np.random.default_rng(1))
    row = remask_at_steps(tokens, steps, 5, 4, MASK, SchedulerConfig(), [0, 2, 1, 3])
    assert (row.noisy[:5] == tokens[:5]).all() and (row.weights[:5] == 0).all()
    for block, s, n_steps in zip(([5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]), [0, 2, 1, 3],
                                 [3, 4, 4, 4]):
        b = np.array(block)
        assert ((row.noisy[b] == MASK) == (steps[b] >= s)).all()
        assert (row.weights[b][steps[b] == s] == n_steps).all() and (row.weights[b][steps[b] != s] == 0).all()
    pairs = inference_aligned_steps(5, 20, 4, 4, 2, False, np.random.default_rng(1))  # 2 tokens a step, S_b = 2
    mean = remask_at_steps(tokens, pairs, 5, 4, MASK, SchedulerConfig(reduction="mean"), [0, 0, 0, 0])
    assert mean.weights[pairs == 0].tolist() == [1.0] * 8  # S_b / |U_b| = 2 / 2
    summed = remask_at_steps(tokens, pairs, 5, 4, MASK, SchedulerConfig(), [0, 0, 0, 0])
    assert summed.weights[pairs == 0].tolist() == [2.0] * 8


def test_random_mask_weights_are_one_over_t():
    tokens = np.arange(40)
    row = remask_random(tokens, 8, 8, MASK, SchedulerConfig(mode="random_mask"), np.random.default_rng(3))
    masked = row.noisy == MASK
    assert not masked[:8].any() and masked.any()
    assert ((row.weights > 0) == masked).all()
    assert (row.weights[masked] >= 1).all()  # 1 / t with t <= 1


def test_row_plans_per_objective_are_pure_functions_of_the_sample():
    model = model_config("fast_dllm_v2").diffusion
    seq = SequenceSpec(np.arange(10, 30), 5, index=7, role=1)
    sched = SchedulerConfig()
    a = plan_rows(seq, model, sched, Objective.DTRPO, seed=1, epoch=0)
    b = plan_rows(seq, model, sched, Objective.DTRPO, seed=1, epoch=0)
    assert len(a) == 1 and (a[0].noisy == b[0].noisy).all() and (a[0].weights == b[0].weights).all()
    vrpo = plan_rows(seq, model, sched, Objective.VRPO, seed=1, epoch=0, vrpo_samples=4)
    assert len(vrpo) == 4 and all(r.weights.max() > 0 for r in vrpo)
    exact = plan_rows(seq, model, sched, Objective.EXACT_TRAJECTORY, seed=1, epoch=0)
    steps = trajectory_steps(seq, model, sched, sample_rng(1, 0, 7, 1))
    assert len(exact) == max(steps_per_block(steps, 5, model.block_size))
    total = sum(r.weights for r in exact)
    assert (total[5:] == 1).all() and (total[:5] == 0).all(), "each response token is scored exactly once"
    with pytest.raises(ValueError, match="carries no reveal steps"):
        plan_rows(seq, model, SchedulerConfig(mode="logged"), Objective.DTRPO, seed=1, epoch=0)


def _spec(shift: bool, alignment: str = "absolute") -> DiffusionSpec:
    return DiffusionSpec(8, 8, 0, shift, MaskVariant.BLOCK_DIFFUSION, BlockAlignment(alignment))


def test_shifted_logits_read_the_previous_position():
    # n = 20, prompt 5, block 8: the noisy half starts at position 0 (block 0 holds the prompt).
    assert logit_index(9, 20, 5, _spec(False)) == 9
    assert logit_index(9, 20, 5, _spec(True)) == 8  # inside the block: noisy copy of position 8
    assert logit_index(16, 20, 5, _spec(True)) == 20 + 15  # a block's first token: clean copy of 15 (the decoder)
    # Fast-dLLM v2's training loss: noisy copy of 15
    assert logit_index(16, 20, 5, _spec(True), FirstTokenRule.NOISY) == 15
    # prompt 8: the first response block starts at 8 and its noisy half there; the previous block is all prompt
    # no noisy copy of 7: its clean copy (same logit)
    assert logit_index(8, 20, 8, _spec(True), FirstTokenRule.NOISY) == 12 + 7


def test_prompt_end_blocks_start_after_the_prompt():
    spec = _spec(False, "prompt_end")
    assert spec.origin(5) == 5 and response_blocks(5, 20, 8, spec.origin(5)) == [range(5, 13), range(13, 20)]
    assert response_blocks(5, 20, 8) == [range(5, 8), range(8, 16), range(16, 20)]  # absolute
    # [z~ ; y0] of prompt 5: the noisy half starts at the prompt's end, positions keep their values
    sample = block_diffusion_sample(torch.arange(20), torch.arange(20), 5, 8, spec.origin(5))
    assert sample.positions[:15].tolist() == list(range(5, 20)) and sample.origin == 5


def test_scheduler_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="scheduler.mode='greedy'"):
        SchedulerConfig(mode="greedy")
    with pytest.raises(ValueError, match="scheduler.tokens_per_step"):
        SchedulerConfig(tokens_per_step=0)
