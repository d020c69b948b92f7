"""Masked-diffusion SFT: its rows, its loss, its data, and a short run through the training loop."""

import json

import numpy as np
import pytest
import torch

from dtrpo_mega.config import load_config
from dtrpo_mega.data import build_preference_dataset
from dtrpo_mega.losses.sft import masked_diffusion_loss
from dtrpo_mega.reproduce.task import SortingTask, write_completions
from dtrpo_mega.synthetic import write_tokenizer


@pytest.fixture(scope="module")
def sorting_data(tmp_path_factory):
    """(completion dataset, preference dataset) of the sorting task for the tiny fast_dllm_v2."""
    root = tmp_path_factory.mktemp("sorting")
    tokenizer = write_tokenizer(root / "tokenizer.json")
    prompts = SortingTask(items=4).problems(24, seed=0)
    build_preference_dataset(write_completions(root / "sft.jsonl", prompts), tokenizer, "fast_dllm_v2", root / "sft", max_length=64)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": SortingTask.answer(p), "rejected": "1 2 3"}) + "\n" for p in prompts))
    build_preference_dataset(pairs, tokenizer, "fast_dllm_v2", root / "pairs", max_length=64)
    return str(root / "sft"), str(root / "pairs")


def _config(data, *overrides):
    return load_config(None, [f"data.path={data}", "model.overrides={num_layers: 2}", "objective.name=sft", "scheduler.mode=random_mask", *overrides])


def test_sft_rows_score_the_chosen_response_with_elbo_weights(world_of_one, sorting_data):
    from dtrpo_mega.training.setup import setup_run

    for data in sorting_data:  # completion data, or a preference dataset's chosen responses
        run = setup_run(_config(data))
        mb = run.rows.micro_batch([run.dataset[i] for i in range(6)], epoch=0)
        assert mb.tokens.shape[0] == 6 and all(role == 0 for _, role, _, _ in mb.samples())
        scored = mb.weights[mb.weights > 0]
        assert scored.numel() and bool((scored >= 1).all())  # 1/t with t in (0, 1]
        assert torch.equal(mb.response_lengths[:, 1], torch.zeros(6, dtype=torch.float64))


def test_masked_diffusion_loss_is_the_per_token_elbo():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9, 0.1], [0.2, 0.4, 0.8, 0.6], [0.3, 0.3, 0.3, 0.3]], dtype=torch.float64))
    weights = torch.tensor([[2.0, 2.0, 0, 0], [0, 0, 4.0, 0], [1.25, 0, 0, 1.25]], dtype=torch.float64)
    lengths = torch.tensor([[4.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    # rows 0 and 1: the first example's response; row 2: the second's
    sums = torch.stack([(logps[:2] * weights[:2]).sum(), (logps[2] * weights[2]).sum()])
    loss, report = masked_diffusion_loss(torch.stack([sums, torch.zeros(2, dtype=torch.float64)], dim=1), lengths)
    first = -(2 * np.log(0.5) + 2 * np.log(0.25) + 4 * np.log(0.8)) / 4
    second = -(2.5 * np.log(0.3)) / 5
    assert float(report["pairs"]) == 2
    torch.testing.assert_close(loss, torch.tensor(first + second, dtype=torch.float64))


def test_preference_objectives_refuse_completion_data(world_of_one, sorting_data):
    from dtrpo_mega.training.setup import setup_run

    with pytest.raises(ValueError, match="holds completion examples, but objective.name=dtrpo needs preference pairs"):
        setup_run(load_config(None, [f"data.path={sorting_data[0]}"]))
    with pytest.raises(ValueError, match="objective.name=sft trains without a reference"):
        _config(sorting_data[0], "reference.mode=precomputed", "reference.cache=x").validate(1)


def test_sft_trains_through_the_loop(world_of_one, sorting_data, tmp_path):
    from dtrpo_mega.checkpointing import read_model_config
    from dtrpo_mega.training.loop import train

    steps = 6
    history = train(_config(sorting_data[0], f"train.train_steps={steps}", "train.global_batch_size=8", "train.micro_batch_size=4",
                            "optimizer.lr=3e-3", f"checkpoint.dir={tmp_path}/ckpt", f"logging.dir={tmp_path}", "logging.progress_bar=false"))
    assert [h["step"] for h in history] == list(range(1, steps + 1))
    assert all("rewards/chosen" not in h and h["rows_per_pair"] == 1.0 for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert read_model_config(tmp_path / "ckpt" / f"iter_{steps:07d}" / "model").family == "fast_dllm_v2"
    assert (tmp_path / "rewards.png").is_file()


def test_sorting_task_answers_and_held_out_prompts():
    task = SortingTask(items=5, max_value=20)
    assert task.answer("sort 3 12 0 12 7 :") == "0 3 7 12 12"
    assert task.is_correct("sort 3 1 :", " 1  3\n") and not task.is_correct("sort 3 1 :", "3 1")
    held_out = task.problems(50, seed=1)
    train = task.problems(200, seed=2, exclude=frozenset(held_out))
    assert len(set(held_out)) == 50 and len(set(train)) == 200 and not set(train) & set(held_out)
    assert task.problems(50, seed=1) == held_out
