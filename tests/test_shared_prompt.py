"""One prompt per pair (`data.share_prompt`): the shared row gives every sample exactly what its own
row gives it (keys seen, sums and gradients in float64), and costs the prompt once."""

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import weighted_sums_and_grads
from dtrpo_mega.data import PreferencePair
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.spec import ScoringLayout
from dtrpo_mega.diffusion.trajectory import SchedulerConfig, SchedulerMode
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.flex import flex_attention
from dtrpo_mega.perf.flops import allowed_pairs
from dtrpo_mega.rows import RowBuilder
from dtrpo_mega.rows.samples import shared_prompt_length

FAMILIES = ["fast_dllm_v2", "sdar", "llada", "dream"]
OBJECTIVES = [("dtrpo", "inference_aligned"), ("dtrpo", "random_mask"), ("vrpo", "random_mask"),
              ("exact_trajectory", "inference_aligned"), ("mean_field", "inference_aligned"), ("sft", "random_mask")]
# prompt, chosen, rejected: prompts inside one block, ending a block (block 4 and 8) and longer
LENGTHS = [(20, 13, 9), (16, 30, 7), (3, 6, 21), (33, 17, 17), (8, 9, 9), (12, 5, 11)]


def _pairs(cfg, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    vocab = cfg.vocab_size - 1
    return [PreferencePair(i, rng.integers(0, vocab, p), rng.integers(0, vocab, c), rng.integers(0, vocab, r), None,
                           None) for i, (p, c, r) in enumerate(lengths)]


def _builders(family, objective="dtrpo", mode="inference_aligned"):
    cfg = model_config(family, num_layers=2)
    separate = RowBuilder(cfg, SchedulerConfig(mode=SchedulerMode(mode)), Objective(objective), seed=3,
                          vrpo_samples=2, layout=ScoringLayout.ONE_PASS, share_prompt=False)
    return cfg, separate, dataclasses.replace(separate, share_prompt=True)


@functools.cache
def _model(family):
    torch.manual_seed(0)
    return build_model(model_config(family, num_layers=2), params_dtype=torch.float64)


def test_shared_prompt_length_follows_the_family_blocks():
    fast, sdar, llada, dream = (model_config(f, "tiny").diffusion for f in FAMILIES)  # blocks 8, 4, 8, 8
    assert [int(shared_prompt_length(p, fast)) for p in (5, 7, 8, 9, 20)] == [0, 0, 0, 8, 16]  # shifted logits
    assert [int(shared_prompt_length(p, sdar)) for p in (3, 4, 5, 21)] == [0, 4, 4, 20]
    assert [int(shared_prompt_length(p, llada)) for p in (5, 40)] == [5, 40]  # blocks start at the prompt's end
    assert [int(shared_prompt_length(p, dream)) for p in (5, 40)] == [0, 32]  # ... and its last logit scores
    assert shared_prompt_length(np.array([5, 21]), sdar).tolist() == [4, 20]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_query_sees_the_keys_of_its_own_row(world_of_one, family):
    _, separate, shared = _builders(family)
    pairs = _pairs(separate.model)
    own, row = separate.micro_batch(pairs, epoch=0), shared.micro_batch(pairs, epoch=0)
    # the tokens of each sample in its own row and in the shared row, by (pair, role, position, noisy)
    key = lambda mb, r, i: (int(mb.layout.positions[r, i]), bool(mb.layout.noisy[r, i]))  # noqa: E731
    shared_rows = 0
    for (slot, role, r_own, m_own), (slot2, role2, r, m) in zip(own.samples(), row.samples(), strict=True):
        assert (slot, role) == (slot2, role2)
        prompts = row.shared_prompts(r)
        sees = m | torch.isin(row.layout.segments[r], torch.tensor(sorted(prompts), dtype=torch.long))
        shared_rows += bool(prompts)
        index = {key(row, r, i): i for i in torch.nonzero(sees).flatten().tolist()}
        own_index = torch.nonzero(m_own).flatten().tolist()
        assert sorted(index) == sorted(key(own, r_own, i) for i in own_index)  # the same tokens, each once
        cols = torch.tensor([index[key(own, r_own, i)] for i in own_index])
        for i in own_index:
            if (j := index[key(own, r_own, i)]) in torch.nonzero(m).flatten().tolist():  # the sample's own tokens
                allowed = row.layout.allowed()[r, 0, j]
                assert not allowed[~sees].any(), "a sample sees another sample"
                assert torch.equal(allowed[cols], own.layout.allowed()[r_own, 0, i, m_own])
                assert row.tokens[r, j] == own.tokens[r_own, i] and row.weights[r, j] == own.weights[r_own, i]
    assert shared_rows, "some pair shares its prompt"
    assert allowed_pairs(row.layout) < allowed_pairs(own.layout)


@pytest.mark.parametrize("objective,mode", OBJECTIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_and_separate_rows_give_the_same_sums_and_gradients_in_float64(world_of_one, family, objective, mode):
    cfg, separate, shared = _builders(family, objective, mode)
    model, pairs = _model(family), _pairs(cfg)
    coefficients = torch.randn(len(pairs), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    unshared = separate.micro_batch(pairs, epoch=1)
    one_row = shared.micro_batch(pairs, epoch=1)
    packed = shared.packed_micro_batches(pairs, epoch=1, row_tokens=4096)
    want, want_grads = weighted_sums_and_grads(model, [unshared], coefficients)
    assert want.abs().sum() > 0
    for micro in ([one_row], packed):
        got, got_grads = weighted_sums_and_grads(model, micro, coefficients)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)

    # the prompt once: every sample of a pair but one leaves out its shared prompt
    real = lambda mb: mb.tokens.numel() - mb.padding_tokens()  # noqa: E731
    saved = sum((len(shared.pair_samples(p, 1)) - 1) * int(shared_prompt_length(len(p.prompt), cfg.diffusion))
                for p in pairs)
    assert real(unshared) - real(one_row) == saved and (saved > 0 or objective == "sft")  # SFT: one sample, maybe
    assert one_row.num_samples() == unshared.num_samples() == sum(mb.num_samples() for mb in packed)


def test_flex_attention_reads_the_shared_prompt_like_the_dense_mask(world_of_one):
    _, _, shared = _builders("sdar", "vrpo", "random_mask")
    layout = shared.micro_batch(_pairs(shared.model), epoch=0).layout
    g = torch.Generator().manual_seed(0)
    b, s = layout.positions.shape
    q, k, v = (torch.randn(b, 2, s, 8, generator=g) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.allowed(), scale=0.3)
    torch.testing.assert_close(flex_attention(q, k, v, layout, scale=0.3), dense, rtol=1e-5, atol=1e-5)


def test_a_pair_without_a_whole_prompt_block_keeps_a_row_per_sample(world_of_one):
    _, _, shared = _builders("sdar")
    mb = shared.micro_batch(_pairs(shared.model, [(3, 6, 21), (9, 5, 5)]), epoch=0)
    assert mb.tokens.shape[0] == 3 and [len(mb.shared_prompts(r)) for r in range(3)] == [0, 0, 1]


def test_per_block_rows_cannot_share_a_prompt():
    cfg = model_config("llada", num_layers=2)
    assert not RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0).share_prompt  # its default: per_block
    assert RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0, layout=ScoringLayout.ONE_PASS).share_prompt
    with pytest.raises(ValueError, match="data.share_prompt=true needs one-pass rows"):
        RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0, share_prompt=True)
