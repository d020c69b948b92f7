"""dTRPO's estimate is unbiased: exhaustive enumeration on tiny float64 models (method doc, section 7)."""

import itertools
import math

import numpy as np
import pytest
import torch

from conftest import float64
from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
from dtrpo_mega.diffusion.scoring import (Objective, SequenceSpec, per_block_rows, plan_rows, scoring_row,
                                          trajectory_steps)
from dtrpo_mega.diffusion.spec import ScoringLayout
from dtrpo_mega.diffusion.trajectory import (SchedulerConfig, remask_at_steps, response_blocks, sample_rng,
                                             steps_per_block)
from dtrpo_mega.losses.preference import LossConfig, pair_losses
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config


def _models(family):
    moe = {"moe": {"aux_loss_coeff": 0.0}} if model_config(family).moe else {}  # the estimator alone
    cfg = model_config(family, num_layers=2, **moe)
    torch.manual_seed(1)
    policy = float64(build_model(cfg))
    torch.manual_seed(2)
    reference = float64(build_model(cfg))
    return cfg, policy, reference


def _token_logps(model, samples, labels, variant=MaskVariant.BLOCK_DIFFUSION):
    tokens, layout = collate(samples, variant, model.dllm_config.block_size, pad_id=0)
    logps = model(tokens, layout).log_softmax(-1)
    out = torch.zeros(labels.shape, dtype=logps.dtype)
    for i, lab in enumerate(labels):
        n = len(samples[i].tokens)
        out[i, :n] = logps[i, :n].gather(-1, lab[:n, None])[:, 0]
    return out


def rows_log_ratio(policy, reference, seq, rows, layout=ScoringLayout.ONE_PASS):
    """sum over rows of weight * (log pi - log pi_ref), each row one forward per model."""
    spec = policy.dllm_config.diffusion
    variant = MaskVariant.BLOCK_DIFFUSION if layout == ScoringLayout.ONE_PASS else spec.attention
    total = torch.zeros((), dtype=torch.float64)
    for row in rows:
        sample, labels, weights = scoring_row(seq.tokens, row, seq.prompt_len, spec, layout)
        lp = _token_logps(policy, [sample], labels[None], variant)[0]
        with torch.no_grad():
            lr = _token_logps(reference, [sample], labels[None], variant)[0]
        total = total + (weights * (lp - lr)).sum()
    return total


def one_pass_estimate(policy, reference, seq, steps, sched, chosen_steps, layout=ScoringLayout.ONE_PASS):
    """l_hat for a fixed choice of one step per block (one [z~ ; y0] row, or one row per block)."""
    spec = policy.dllm_config.diffusion
    origin = spec.origin(seq.prompt_len)
    row = remask_at_steps(seq.tokens, steps, seq.prompt_len, spec.block_size, spec.mask_token_id, sched, chosen_steps,
                          origin)
    if layout == ScoringLayout.PER_BLOCK:
        blocks = response_blocks(seq.prompt_len, len(seq.tokens), spec.block_size, origin)
        return rows_log_ratio(policy, reference, seq, per_block_rows(row, seq.tokens, blocks, spec.mask_token_id),
                              layout)
    return rows_log_ratio(policy, reference, seq, [row], layout)


def decode_logps(model, state, block_stop, prompt_len):
    """Log-probs of one decoder call: block-causal, the clean earlier blocks and the current block;
    full attention, the whole state (later blocks [M])."""
    spec = model.dllm_config.diffusion
    context = state[:block_stop] if spec.attention == MaskVariant.BLOCK_DIFFUSION else state
    _, layout = collate([plain_sample(context, spec.origin(prompt_len))], spec.attention, spec.block_size, pad_id=0)
    return model(context[None], layout)[0].log_softmax(-1)


def exact_log_ratio(policy, reference, seq, steps):
    """Run every decoding step separately; scheduler terms log q(U_s | z_{s-1}) included. Positions
    with step -1 after the prompt (a masked tail) stay [M] throughout."""
    spec = policy.dllm_config.diffusion
    tokens = torch.from_numpy(seq.tokens)
    blocks = response_blocks(seq.prompt_len, len(tokens), spec.block_size, spec.origin(seq.prompt_len))
    total = torch.zeros((), dtype=torch.float64)
    for b, block in enumerate(blocks):
        idx = np.asarray(block)
        for s in range(int(steps[idx].max()) + 1):
            state = tokens.clone()
            state[idx[(steps[idx] >= s) | (steps[idx] < 0)]] = spec.mask_token_id
            for later in blocks[b + 1 :]:
                state[np.asarray(later)] = spec.mask_token_id
            revealed = idx[steps[idx] == s]
            still_masked = int((steps[idx] >= s).sum())
            log_q = -math.log(math.comb(still_masked, len(revealed)))  # the same for both models
            lp_policy = decode_logps(policy, state, block.stop, seq.prompt_len)
            lp_ref = decode_logps(reference, state, block.stop, seq.prompt_len).detach()
            for pos in revealed:
                at = pos - 1 if spec.logits_shift else pos
                total = total + (lp_policy[at, tokens[pos]] + log_q) - (lp_ref[at, tokens[pos]] + log_q)
    return total


CASES = [
    # family, length, prompt length, tokens per step: blocks with several steps, a partial first
    # block (prompt not a multiple of the block), and a short last block.
    ("sdar", 11, 3, 1),
    ("fast_dllm_v2", 13, 3, 1),
    ("fast_dllm_v2", 14, 5, 2),
    # the mixtures of experts: SDAR-MoE (softmax top-2 of 8), LLaDA2 (dense layer 0, then sigmoid
    # group-limited top-4 of 8 with a shared expert, partial rope, blocks of 8)
    ("sdar_moe", 11, 3, 1),
    ("llada2", 18, 5, 2),
]


@pytest.mark.parametrize("family,n,prompt_len,k", CASES)
def test_estimate_and_gradient_are_unbiased(world_of_one, family, n, prompt_len, k):
    cfg, policy, reference = _models(family)
    sched = SchedulerConfig(tokens_per_step=k)
    rng = np.random.default_rng(0)
    seq = SequenceSpec(rng.integers(0, cfg.vocab_size - 1, n), prompt_len, index=0, role=0)
    steps = trajectory_steps(seq, cfg.diffusion, sched, sample_rng(0, 0, 0, 0))
    per_block = steps_per_block(steps, prompt_len, cfg.block_size, cfg.diffusion.origin(prompt_len))
    combos = list(itertools.product(*[range(s) for s in per_block]))
    assert len(combos) >= 6 and max(per_block) >= 3

    params = [p for p in policy.parameters() if p.requires_grad]
    estimates, grad_sum = [], [torch.zeros_like(p) for p in params]
    for combo in combos:
        est = one_pass_estimate(policy, reference, seq, steps, sched, list(combo))
        grads = torch.autograd.grad(est, params, allow_unused=True)
        grad_sum = [a + (g if g is not None else 0) for a, g in zip(grad_sum, grads)]
        estimates.append(est.detach())
    estimates = torch.stack(estimates)

    exact = exact_log_ratio(policy, reference, seq, steps)
    exact_grads = torch.autograd.grad(exact, params, allow_unused=True)

    assert estimates.std() > 1e-3, "the estimate should vary with the sampled steps"
    torch.testing.assert_close(estimates.mean(), exact.detach(), rtol=1e-10, atol=1e-10)
    # megatron-core's router takes its softmax / sigmoid of the routing scores in float32 whatever
    # the model's dtype, so a mixture of experts' gradients carry float32 rounding of the gates
    rtol, atol = (1e-6, 1e-8) if cfg.moe is not None else (1e-9, 1e-11)
    for p_grad, e_grad in zip(grad_sum, exact_grads):
        expected = e_grad if e_grad is not None else torch.zeros_like(p_grad)
        torch.testing.assert_close(p_grad / len(combos), expected, rtol=rtol, atol=atol)

    # Jensen: the expected sampled loss is at least the loss of the exact log-ratio.
    rejected = estimates.flip(0) - 0.3  # another sequence's estimates, paired with every choice
    loss_cfg = LossConfig(beta=0.5)
    every = torch.stack(torch.broadcast_tensors(estimates[:, None], rejected[None, :]), dim=-1).reshape(-1, 2)
    sampled = pair_losses(every, torch.ones_like(every), loss_cfg).mean()
    assert sampled >= pair_losses(torch.stack([exact.detach(), rejected.mean()])[None], torch.ones(1, 2), loss_cfg)


def test_exact_trajectory_objective_equals_stepwise_decoding(world_of_one):
    """The `exact_trajectory` rows (each block at step s) sum to the step-by-step decoding."""
    cfg, policy, reference = _models("fast_dllm_v2")
    sched = SchedulerConfig()
    seq = SequenceSpec(np.random.default_rng(3).integers(0, cfg.vocab_size - 1, 13), 3, index=4, role=1)
    rows = plan_rows(seq, cfg.diffusion, sched, Objective.EXACT_TRAJECTORY, seed=9, epoch=0)
    total = rows_log_ratio(policy, reference, seq, rows)
    steps = trajectory_steps(seq, cfg.diffusion, sched, sample_rng(9, 0, 4, 1))
    assert len(rows) == max(steps_per_block(steps, 3, cfg.block_size))
    torch.testing.assert_close(total.detach(), exact_log_ratio(policy, reference, seq, steps).detach(), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("family,n,prompt_len", [("sdar", 11, 3), ("fast_dllm_v2", 13, 3), ("fast_dllm_v2", 14, 8)])
def test_mean_field_row_is_one_forward_of_the_all_masked_response(world_of_one, family, n, prompt_len):
    """`mean_field` scores every response token in the single decoder call on the all-[M] state."""
    cfg, policy, _ = _models(family)
    seq = SequenceSpec(np.random.default_rng(n).integers(0, cfg.vocab_size - 1, n), prompt_len, index=0, role=0)
    [row] = plan_rows(seq, cfg.diffusion, SchedulerConfig(), Objective.MEAN_FIELD, seed=0, epoch=0)
    sample, labels, weights = scoring_row(seq.tokens, row, prompt_len, cfg.diffusion)
    one_pass = (weights * _token_logps(policy, [sample], labels[None])[0]).sum()
    state = torch.from_numpy(seq.tokens).clone()
    state[prompt_len:] = cfg.mask_token_id
    logps = decode_logps(policy, state, len(state), prompt_len)
    shift = int(cfg.logits_shift)
    expected = sum(logps[pos - shift, int(seq.tokens[pos])] for pos in range(prompt_len, n))
    assert int((weights > 0).sum()) == n - prompt_len
    torch.testing.assert_close(one_pass, expected, rtol=1e-10, atol=1e-10)
