"""Masked-diffusion SFT: its rows, its loss, its data, and a short run through the training loop."""

import json

import numpy as np
import pytest
import torch

from dtrpo_mega.config import load_config
from dtrpo_mega.data import build_preference_dataset
from dtrpo_mega.diffusion.spec import SFTNormalizer
from dtrpo_mega.losses.sft import masked_diffusion_loss
from dtrpo_mega.data.synthetic import ListTask, write_completions, write_tokenizer


@pytest.fixture(scope="module")
def sorting_data(tmp_path_factory):
    """(completion dataset, preference dataset) of the sorting task for the tiny fast_dllm_v2."""
    root = tmp_path_factory.mktemp("sorting")
    tokenizer = write_tokenizer(root / "tokenizer.json")
    prompts = ListTask(items=4).problems(24, seed=0)
    build_preference_dataset(write_completions(root / "sft.jsonl", ListTask(items=4), prompts), tokenizer,
                             "fast_dllm_v2", root / "sft", max_length=64)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": ListTask().answer(p), "rejected": "1 2 3"}) + "\n"
                             for p in prompts))
    build_preference_dataset(pairs, tokenizer, "fast_dllm_v2", root / "pairs", max_length=64)
    return str(root / "sft"), str(root / "pairs")


def _config(data, *overrides):
    return load_config(None, [f"data.path={data}", "model.overrides={num_layers: 2}", "objective.name=sft",
                              "scheduler.mode=random_mask", *overrides])


@pytest.mark.parametrize("convention", ["fast_dllm_v2", "sdar", "llada", "dream"])
def test_sft_rows_follow_the_family_convention(world_of_one, sorting_data, convention):
    """Fast-dLLM v2: two rows with complementary masks, weight 1 (every response token scored once);
    the others: one row, one t per response, weight 1/t."""
    from dtrpo_mega.training.setup import setup_run

    for data in sorting_data:  # completion data, or a preference dataset's chosen responses
        run = setup_run(_config(data, f"objective.sft_convention={convention}"))
        mb = run.rows.micro_batch([run.dataset[i] for i in range(6)], epoch=0)
        complementary = convention == "fast_dllm_v2"
        assert (mb.tokens.shape[0] == 6 * (2 if complementary else 1)
                and all(role == 0 for _, role, _, _ in mb.samples()))
        assert torch.equal(mb.response_lengths[:, 1], torch.zeros(6, dtype=torch.float64))
        scored = mb.weights[mb.weights > 0]
        if complementary:
            assert bool((scored == 1).all())
            # each token once
            assert torch.equal(mb.sequence_sums(torch.ones_like(mb.weights))[:, 0], mb.response_lengths[:, 0])
        else:
            assert scored.numel() and bool((scored >= 1).all())  # 1/t with t in (0, 1]
            for slot, _, row, mask in mb.samples():  # one t for the whole response
                assert mb.weights[row][mask & (mb.weights[row] > 0)].unique().numel() <= 1


def test_fast_dllm_v2_sft_reads_a_blocks_first_token_from_the_noisy_copy(world_of_one, sorting_data):
    """Fast-dLLM v2's training loss is a shifted cross-entropy over the noisy half; dTRPO keeps the decoder's rule."""
    from dtrpo_mega.training.setup import setup_run

    for objective, noisy in (("sft", True), ("dtrpo", False)):
        run = setup_run(_config(sorting_data[1], f"objective.name={objective}", "scheduler.mode=inference_aligned"))
        pair = run.dataset[0]
        samples = run.rows.pair_samples(pair, epoch=0)
        k, p = run.model_config.block_size, len(pair.prompt)
        # a block's first token, after the first block
        first = next(q for q in range(p + 1, p + len(pair.chosen)) if q % k == 0)
        found = []
        for s in samples[: 2 if objective == "sft" else 1]:
            n_noisy = int(s.sample.noisy.sum())
            reads = [i for i in range(len(s)) if s.weights[i] > 0 and int(s.sample.positions[i]) == first - 1]
            found += [bool(s.sample.noisy[i]) for i in reads]
            assert n_noisy > 0
        assert found == [noisy] or (not noisy and found in ([], [False]))


def test_masked_diffusion_loss_is_the_per_token_elbo():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9, 0.1], [0.2, 0.4, 0.8, 0.6], [0.3, 0.3, 0.3, 0.3]],
                                   dtype=torch.float64))
    weights = torch.tensor([[2.0, 2.0, 0, 0], [0, 0, 4.0, 0], [1.25, 0, 0, 1.25]], dtype=torch.float64)
    lengths = torch.tensor([[4.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    # rows 0 and 1: the first example's response; row 2: the second's
    sums = torch.stack([(logps[:2] * weights[:2]).sum(), (logps[2] * weights[2]).sum()])
    loss, report = masked_diffusion_loss(torch.stack([sums, torch.zeros(2, dtype=torch.float64)], dim=1), lengths)
    first = -(2 * np.log(0.5) + 2 * np.log(0.25) + 4 * np.log(0.8)) / 4
    second = -(2.5 * np.log(0.3)) / 5
    assert float(report["pairs"]) == 2
    torch.testing.assert_close(loss, torch.tensor(first + second, dtype=torch.float64))


def test_batch_normalizers_divide_by_the_global_batch_tokens():
    sums = torch.tensor([[-6.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    lengths = torch.tensor([[3.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    # two sequences with 8 response tokens between them: the loss summed over sequences is
    # (6 + 2) * (2 / 8), whose mean over the 2 sequences is (6 + 2) / 8
    loss, report = masked_diffusion_loss(sums, lengths, SFTNormalizer.RESPONSE_TOKENS, sequences_per_unit=2 / 8)
    torch.testing.assert_close(loss / 2, torch.tensor(8.0 / 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs the global batch"):
        masked_diffusion_loss(sums, lengths, SFTNormalizer.MASKED_TOKENS)


def test_preference_objectives_refuse_completion_data(world_of_one, sorting_data):
    from dtrpo_mega.training.setup import setup_run

    with pytest.raises(ValueError, match="holds completion examples, but objective.name=dtrpo needs preference pairs"):
        setup_run(load_config(None, [f"data.path={sorting_data[0]}"]))
    with pytest.raises(ValueError, match="objective.name=sft trains without a reference"):
        _config(sorting_data[0], "reference.mode=precomputed", "reference.cache=x").validate(1)


def test_sft_trains_through_the_loop(world_of_one, sorting_data, tmp_path):
    from dtrpo_mega.checkpoint.model import read_model_config
    from dtrpo_mega.training.loop import train

    steps = 6
    history = train(_config(sorting_data[0], f"train.train_steps={steps}", "train.global_batch_size=8",
                            "train.micro_batch_size=4", "optimizer.lr=3e-3", f"checkpoint.dir={tmp_path}/ckpt",
                            f"logging.dir={tmp_path}", "logging.progress_bar=false"))
    assert [h["step"] for h in history] == list(range(1, steps + 1))
    # Fast-dLLM v2: complementary masks
    assert all("rewards/chosen" not in h and h["rows_per_pair"] == 2.0 for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert read_model_config(tmp_path / "ckpt" / f"iter_{steps:07d}" / "model").family == "fast_dllm_v2"
    assert (tmp_path / "rewards.png").is_file()


def test_sorting_task_answers_and_held_out_prompts():
    task = ListTask(items=5, max_value=20)
    assert task.answer("sort 3 12 0 12 7 :") == "0 3 7 12 12"
    assert task.is_correct("sort 3 1 :", " 1  3\n") and not task.is_correct("sort 3 1 :", "3 1")
    held_out = task.problems(50, seed=1)
    train = task.problems(200, seed=2, exclude=frozenset(held_out))
    assert len(set(held_out)) == 50 and len(set(train)) == 200 and not set(train) & set(held_out)
    assert task.problems(50, seed=1) == held_out
