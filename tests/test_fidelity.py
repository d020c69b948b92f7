"""Scoring equals each family's own decoder: replayed Sampler trajectories (float64), the per-block
layout of full-attention families, and the masked last block of Fast-dLLM v2's `generate`."""

import itertools

import numpy as np
import pytest
import torch

from dtrpo_mega.generation.sampler import DecodeConfig, Sampler
from dtrpo_mega.diffusion.scoring import SequenceSpec, trajectory_steps
from dtrpo_mega.diffusion.spec import ScoringLayout
from dtrpo_mega.diffusion.trajectory import SchedulerConfig, sample_rng, steps_per_block
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import get_family, model_config
from tests.test_estimator import exact_log_ratio, one_pass_estimate

EOT = 7


def _models(family):
    cfg = model_config(family, num_layers=2)
    torch.manual_seed(1)
    policy = build_model(cfg).double().eval()
    torch.manual_seed(2)
    reference = build_model(cfg).double().eval()
    return cfg, policy, reference


class EndsAt:
    """The policy as the decoder sees it, with end-of-turn forced at one slot; records every call."""

    def __init__(self, model, slot: int):
        self.model, self.slot, self.calls = model, slot, []

    def __call__(self, tokens, layout):
        with torch.no_grad():
            logits = self.model(tokens, layout).clone()
        shift = int(self.model.dllm_config.logits_shift)
        logits[0, layout.positions[0] == self.slot - shift, EOT] += 100.0
        self.calls.append((tokens, layout))
        return logits


def decoder_log_ratio(policy, reference, calls, prompt_len, tokens, steps):
    """sum over the decoder's own calls of log pi(revealed | the call's input) - log pi_ref(...)."""
    shift = int(policy.dllm_config.logits_shift)
    total = 0.0
    for c, (inputs, layout) in enumerate(calls):
        with torch.no_grad():
            lp, lr = policy(inputs, layout)[0].log_softmax(-1), reference(inputs, layout)[0].log_softmax(-1)
        for pos in prompt_len + np.flatnonzero(steps == c):
            at = int((layout.positions[0] == pos - shift).nonzero()[0])
            total += float(lp[at, tokens[pos]] - lr[at, tokens[pos]])
    return total


def mean_over_step_choices(policy, reference, seq, layout):
    spec = policy.dllm_config.diffusion
    sched = SchedulerConfig(mode="logged")
    steps = trajectory_steps(seq, spec, sched, sample_rng(0, 0, 0, 0))
    per_block = steps_per_block(steps, seq.prompt_len, spec.block_size, spec.origin(seq.prompt_len))
    combos = list(itertools.product(*[range(s) for s in per_block]))
    with torch.no_grad():
        values = [float(one_pass_estimate(policy, reference, seq, steps, sched, list(c), layout)) for c in combos]
    return float(np.mean(values)), steps, len(combos)


# family, end-of-turn slot: every answer ends inside a block, with a partial first block (prompt 5)
REPLAYS = [("fast_dllm_v2", 9), ("sdar", 13), ("llada", 9), ("dream", 9)]


@pytest.mark.parametrize("family,eot_slot", REPLAYS)
def test_scoring_replays_the_samplers_own_trajectory(world_of_one, family, eot_slot):
    """The estimator's mean over every step choice equals the log-ratio of the decoder calls the
    Sampler ran, for an answer that ends mid-block: the trajectory keeps the decoded tail."""
    cfg, policy, reference = _models(family)
    spec, fam = cfg.diffusion, get_family(family)
    prompt = torch.randint(0, 200, (5,), generator=torch.Generator().manual_seed(3)).tolist()
    decoder = EndsAt(policy, eot_slot)
    decode = DecodeConfig(max_new_tokens=16, tokens_per_step=2, end_of_turn_id=EOT, kv_cache=False,
                          stop_at_end_of_turn=fam.stops_at_end_of_turn)
    [gen], _ = Sampler(decoder, spec, cfg.vocab_size, decode).generate([prompt])
    assert gen.ended and len(prompt) + len(gen.tokens) - 1 == eot_slot and gen.tail, "the answer ends mid-block"
    assert ((len(prompt) + len(gen.tokens) + len(gen.tail) - spec.origin(len(prompt))) % spec.block_size == 0
            or not fam.stops_at_end_of_turn)

    tokens = np.asarray(prompt + gen.tokens + gen.tail)
    steps = np.asarray(gen.reveal_steps)
    target = decoder_log_ratio(policy, reference, decoder.calls, len(prompt), tokens, steps)
    seq = SequenceSpec(tokens, len(prompt), index=0, role=0, reveal_steps=steps)
    estimate, _, combos = mean_over_step_choices(policy, reference, seq, fam.scoring)
    assert combos >= 4
    assert estimate == pytest.approx(target, rel=1e-9, abs=1e-9)

    # the answer alone, cut at end-of-turn (what was scored before): not the decoder's trajectory
    n = len(prompt) + len(gen.tokens)
    cut = SequenceSpec(tokens[:n], len(prompt), index=0, role=0, reveal_steps=steps[: len(gen.tokens)])
    assert abs(mean_over_step_choices(policy, reference, cut, fam.scoring)[0] - target) > 1e-4


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_per_block_rows_are_exact_and_one_pass_is_not_for_full_attention(world_of_one, family):
    cfg, policy, reference = _models(family)
    spec = cfg.diffusion
    seq = SequenceSpec(np.random.default_rng(5).integers(0, cfg.vocab_size - 1, 22), 5, index=0, role=0)
    sched = SchedulerConfig(tokens_per_step=2)
    steps = trajectory_steps(seq, spec, sched, sample_rng(0, 0, 0, 0))
    exact = float(exact_log_ratio(policy, reference, seq, steps).detach())
    per_block = steps_per_block(steps, seq.prompt_len, spec.block_size, spec.origin(seq.prompt_len))
    # blocks [5, 13), [13, 21), [21, 22): they start at the prompt's end; with shifted logits
    # (Dream) a block's first token is its own step, as in the Sampler
    assert per_block == ([5, 5, 1] if spec.logits_shift else [4, 4, 1])
    means = {}
    for layout in ScoringLayout:
        with torch.no_grad():
            values = [float(one_pass_estimate(policy, reference, seq, steps, sched, list(c), layout))
                      for c in itertools.product(*[range(s) for s in per_block])]
        means[layout] = np.mean(values)
    assert means[ScoringLayout.PER_BLOCK] == pytest.approx(exact, rel=1e-10, abs=1e-10)
    assert abs(means[ScoringLayout.ONE_PASS] - exact) > 1e-4  # the one-pass approximation is biased


def test_a_masked_tail_is_scored_as_fast_dllm_v2s_generate_leaves_it(world_of_one):
    """`last_block=mask`: the slots after end-of-turn stay [M] in every state and are never scored."""
    cfg, policy, reference = _models("fast_dllm_v2")
    tokens = np.random.default_rng(6).integers(0, cfg.vocab_size - 1, 16)
    tokens[12:] = cfg.mask_token_id  # the answer ends at 11; block [8, 16) keeps 4 masked slots
    seq = SequenceSpec(tokens, 5, index=0, role=0, masked_tail=4)
    sched = SchedulerConfig(tokens_per_step=2)
    steps = trajectory_steps(seq, cfg.diffusion, sched, sample_rng(0, 0, 0, 0))
    assert (steps[12:] == -1).all()
    per_block = steps_per_block(steps, 5, cfg.block_size)
    with torch.no_grad():
        values = [float(one_pass_estimate(policy, reference, seq, steps, sched, list(c)))
                  for c in itertools.product(*[range(s) for s in per_block])]
    assert np.mean(values) == pytest.approx(float(exact_log_ratio(policy, reference, seq, steps).detach()), rel=1e-10,
                                            abs=1e-10)
