"""Pairwise-preference accuracy agrees with training's own reward metrics on the same rows."""

import torch

from dtrpo_mega.config import load_config
from dtrpo_mega.eval.preference import preference_accuracy
from dtrpo_mega.losses.preference import LossConfig, dtrpo_loss
from dtrpo_mega.training.setup import build_policy, build_reference_model, setup_run


def test_preference_accuracy(world_of_one, counting_data):
    run = setup_run(load_config(None, [f"data.path={counting_data}", "model.overrides={num_layers: 2}",
                                       "train.global_batch_size=4"]))
    policy = build_policy(run).eval()
    reference = build_reference_model(run, policy).eval()

    same = preference_accuracy(policy, reference, run.dataset, run.rows, beta=0.1, draws=1)
    assert same.pairs == len(run.dataset) and same.accuracy == 0.0 and same.mean_margin == 0.0, "ties are not ranked"

    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.9)
    one = preference_accuracy(policy, reference, run.dataset, run.rows, beta=0.1, draws=1, batch_pairs=5)
    # The same rows through training's loss: identical rewards/accuracies and margins.
    mb = run.rows.micro_batch([run.dataset[i] for i in range(len(run.dataset))], epoch=0)
    with torch.no_grad():
        ref_sums = mb.sequence_sums(-reference(mb.tokens, mb.layout, labels=mb.labels))
        _, report = dtrpo_loss(mb.sequence_sums(-policy(mb.tokens, mb.layout, labels=mb.labels)), ref_sums,
                               mb.response_lengths, LossConfig(beta=0.1))
        count = report["pairs"]
    assert 0 < one.accuracy < 1
    assert one.accuracy == report["rewards/accuracies"].item() / count.item()
    assert abs(one.mean_margin - report["rewards/margins"].item() / count.item()) < 1e-6

    several = preference_accuracy(policy, reference, run.dataset, run.rows, beta=0.1, draws=3)
    assert not torch.allclose(several.rewards, one.rewards), "more draws average other re-maskings in"


def test_evaluate_tool_reports_pairwise_accuracy(world_of_one, counting_data, tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    from dtrpo_mega.checkpoint.model import save_model

    run = setup_run(load_config(None, [f"data.path={counting_data}", "model.overrides={num_layers: 2}",
                                       "train.global_batch_size=4"]))
    policy = build_policy(run).eval()
    reference = build_reference_model(run, policy).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.9)
    save_model(policy, tmp_path / "policy")
    save_model(reference, tmp_path / "reference")
    expected = preference_accuracy(policy, reference, run.dataset, run.rows, beta=0.2, draws=2)

    spec = importlib.util.spec_from_file_location("evaluate_tool", "tools/evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "results.json"
    rc = tool.main(["--ckpt", str(tmp_path / "policy"), "--tokenizer",
                    str(Path(counting_data).parent / "tokenizer.json"), "--pairs", counting_data, "--reference",
                    str(tmp_path / "reference"), "--beta", "0.2", "--draws", "2", "--pair-seed",
                    str(run.cfg.train.seed), "--out", str(out)])
    assert rc == 0 and "pairwise_accuracy" in capsys.readouterr().out
    summary = json.loads(out.read_text())["summary"][f"pairs:{Path(counting_data).name}"]
    assert summary["n"] == expected.pairs and abs(summary["score"] - expected.accuracy) < 1e-12
