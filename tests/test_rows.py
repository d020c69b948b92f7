"""Typed scored rows and packing: packing changes no number, and bad packing settings are named."""

import numpy as np
import pytest
import torch

from conftest import weighted_sums_and_grads
from dtrpo_mega.config import load_config
from dtrpo_mega.data import PreferencePair
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.trajectory import SchedulerConfig, SchedulerMode
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.rows import RowBuilder
from dtrpo_mega.rows.packing import ItemTooLong, pack


def test_first_fit_decreasing_packs_every_item_once_within_capacity():
    lengths = [70, 10, 40, 90, 30, 60, 20, 50]
    rows = pack(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 4  # 370 tokens: four rows of 100 is the least possible
    assert rows == pack(lengths, 100) and all(row == sorted(row) for row in rows)
    with pytest.raises(ItemTooLong, match="item 3 needs 90 tokens, more than the row budget of 80"):
        pack(lengths, 80)


def _pairs(cfg, lengths, seed=0):
    rng = np.random.default_rng(seed)
    vocab = cfg.vocab_size - 1
    return [PreferencePair(i, rng.integers(0, vocab, p), rng.integers(0, vocab, c), rng.integers(0, vocab, r), None,
                           None)
            for i, (p, c, r) in enumerate(lengths)]


LENGTHS = [(5, 13, 9), (3, 30, 7), (11, 6, 21), (7, 17, 17), (2, 5, 40)]


@pytest.mark.parametrize("objective,mode", [("dtrpo", "inference_aligned"), ("dtrpo", "random_mask"),
                                            ("vrpo", "random_mask"), ("exact_trajectory", "inference_aligned"),
                                            ("mean_field", "inference_aligned"), ("sft", "random_mask")])
def test_packed_rows_give_the_same_sums_and_gradients_as_unpacked(world_of_one, objective, mode):
    cfg = model_config("fast_dllm_v2", num_layers=2)
    torch.manual_seed(0)
    model = build_model(cfg)
    builder = RowBuilder(cfg, SchedulerConfig(mode=SchedulerMode(mode)), Objective(objective), seed=3, vrpo_samples=2)
    pairs = _pairs(cfg, LENGTHS)
    unpacked = builder.micro_batch(pairs, epoch=1)
    budget = 2 * max(sum(len(s) for s in builder.pair_samples(p, epoch=1)) for p in pairs)
    packed = builder.packed_micro_batches(pairs, epoch=1, row_tokens=budget)
    assert 1 < len(packed) < len(pairs) and all(mb.tokens.shape[0] == 1 and mb.tokens.shape[1] <= budget
                                                for mb in packed)
    assert sum(mb.num_samples() for mb in packed) == unpacked.num_samples()
    assert (sum(mb.padding_tokens() for mb in packed) / sum(mb.tokens.numel() for mb in packed)
            < unpacked.padding_tokens() / unpacked.tokens.numel())

    coefficients = torch.randn(len(pairs), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    want, want_grads = weighted_sums_and_grads(model, [unpacked], coefficients)
    got, got_grads = weighted_sums_and_grads(model, packed, coefficients)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_packed_row_holds_each_sample_as_its_own_segment(world_of_one):
    cfg = model_config("sdar", num_layers=2)
    builder = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=0)
    pairs = _pairs(cfg, LENGTHS[:3])
    [row] = builder.packed_micro_batches(pairs, epoch=0, row_tokens=1024)
    alone = builder.micro_batch(pairs, epoch=0)
    spans = row.samples()
    assert [(slot, role) for slot, role, _, _ in spans] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    for (_, _, _, mask), (_, _, r, own) in zip(spans, alone.samples()):
        for packed_field, own_field in ((row.tokens, alone.tokens), (row.layout.positions, alone.layout.positions),
                                        (row.labels, alone.labels), (row.weights, alone.weights)):
            assert torch.equal(packed_field[0][mask], own_field[r][own])
    real = row.layout.segments[0] > 0
    assert bool(real[: int(real.sum())].all()), "padding only at the end"


def _config(data, *overrides):
    return load_config(None, [f"data.path={data}", "model.overrides={num_layers: 2}", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["data.packing=true"], "data.packing=true needs train.micro_batch_tokens"),
    (["train.micro_batch_tokens=256"], "train.micro_batch_tokens=256 applies only with data.packing=true"),
    (["data.packing=true", "train.micro_batch_tokens=250", "parallel.context_parallel_size=4"],
     r"train.micro_batch_tokens=250 must be a multiple of 2 x parallel.context_parallel_size=4"),
])
def test_bad_packing_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config("unused", *overrides).validate(world_size=4)


def test_a_budget_below_the_longest_pair_is_refused_before_training(world_of_one, counting_data):
    from dtrpo_mega.training.setup import setup_run

    for extra in ([], ["objective.name=vrpo", "objective.vrpo_samples=4"]):  # VRPO: n rows per sequence
        run = setup_run(_config(counting_data, *extra))
        need = max(sum(len(s) for s in run.rows.pair_samples(run.dataset[i], epoch=0)) for i in range(len(run.dataset)))
        with pytest.raises(ValueError,
                           match=rf"train.micro_batch_tokens={need - 1} is smaller than pair \d+ .* whose rows take "
                                 rf"{need} tokens"):
            setup_run(_config(counting_data, "data.packing=true", f"train.micro_batch_tokens={need - 1}", *extra))
        setup_run(_config(counting_data, "data.packing=true", f"train.micro_batch_tokens={need}", *extra))
