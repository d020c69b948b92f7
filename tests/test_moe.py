"""Mixture-of-experts training: the load-balancing loss's weight, the router metrics, aux-loss-free
bias balancing (policy only), and EP runs equal to EP1 runs step for step."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, load_tool, run_torchrun
from dtrpo_mega.config import load_config
from dtrpo_mega.parallel.grads import finalize_grads
from dtrpo_mega.training.loop import micro_batches_of, step_loss, train
from dtrpo_mega.training.moe import RouterMonitor
from dtrpo_mega.training.reference import ResidentReference
from dtrpo_mega.training.setup import build_policy, build_reference_model, setup_run
from dtrpo_mega.training.step import forward_backward


def _config(data, family, *overrides):
    return load_config(None, [f"data.path={data}", f"model.family={family}", "train.global_batch_size=4",
                              "train.micro_batch_size=2", *overrides])


def _step(run, policy, reference, monitor=None, pairs=4):
    micro = reference.with_reference(micro_batches_of(run, step=0))
    policy.zero_grad()
    if monitor is None:
        forward_backward(policy, micro, step_loss(run, micro))
    else:
        with monitor.step(len(micro), pairs):
            forward_backward(policy, micro, step_loss(run, micro))
    finalize_grads(policy, num_units=pairs)
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def test_balancing_loss_weight_is_its_coefficient_over_micro_batches(world_of_one, counting_datasets):
    """The router gradient from the balancing loss is the same whatever the pair count the step is
    divided by, and zero without the loss; the coefficient is restored after the step."""
    data = counting_datasets("sdar_moe")
    grads = {}
    for coeff, pairs in ((0.0, 4), (0.01, 4), (0.01, 8)):
        overrides = f"model.overrides={{num_layers: 2, moe: {{aux_loss_coeff: {coeff}}}}}"
        run = setup_run(_config(data, "sdar_moe", overrides))
        policy = build_policy(run)
        reference = ResidentReference(build_reference_model(run, policy))
        monitor = RouterMonitor(policy, dp_size=1)
        grads[coeff, pairs] = _step(run, policy, reference, monitor, pairs)
        assert policy.config.moe_aux_loss_coeff == coeff
        metrics = monitor.metrics()
        assert ("moe/aux_loss" in metrics) == (coeff > 0)
        if coeff:
            assert 0.9 < metrics["moe/aux_loss"] < 8  # 1 when balanced, at most the number of experts
        assert set(metrics) >= {"moe/expert_load_max", "moe/layer0/expert_load_max", "moe/layer1/expert_load_min"}
        assert metrics["moe/expert_load_max"] >= 1 >= metrics["moe/layer1/expert_load_min"] >= 0
    router = "decoder.layers.0.mlp.router.weight"
    # a step over 8 pairs divides the dTRPO part by 8; the balancing part keeps its weight
    balancing = grads[0.01, 4][router] - grads[0.0, 4][router]
    assert balancing.abs().max() > 1e-6
    torch.testing.assert_close(grads[0.01, 8][router] - grads[0.0, 4][router] * 4 / 8, balancing, rtol=1e-5,
                               atol=1e-9)


def test_expert_bias_moves_for_the_policy_and_never_for_the_reference(world_of_one, counting_datasets):
    run = setup_run(_config(counting_datasets("llada2"), "llada2",
                            "model.overrides={num_layers: 2, moe: {bias_update_rate: 0.01}}"))
    policy = build_policy(run)
    reference_model = build_reference_model(run, policy)
    reference = ResidentReference(reference_model)
    routers = [m for m in policy.modules() if getattr(m, "expert_bias", None) is not None]
    assert len(routers) == 1  # layer 0 is dense (first_k_dense_replace)
    counts = []
    routers[0].register_forward_hook(lambda m, i, out: counts.append(out[1].sum(0).double())
                                     if m.training and torch.is_grad_enabled() else None)
    _step(run, policy, reference)
    count = torch.stack(counts).sum(0)
    expected = torch.sign(count.mean() - count) * 0.01
    torch.testing.assert_close(routers[0].expert_bias.double(), expected)
    assert not routers[0].local_tokens_per_expert.any()  # the counts restart with the next step
    assert all(not m.expert_bias.any() for m in reference_model.modules()
               if getattr(m, "expert_bias", None) is not None)


def test_training_logs_the_router_metrics(world_of_one, counting_datasets, tmp_path):
    history = train(_config(counting_datasets("sdar_moe"), "sdar_moe", "model.overrides={num_layers: 2}",
                            "train.train_steps=2", f"logging.dir={tmp_path}", "logging.progress_bar=false"))
    assert [r["step"] for r in history] == [1, 2]
    assert all(0.9 < r["moe/aux_loss"] < 8 and r["moe/expert_load_max"] >= 1 for r in history)


def _losses(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada2", "sdar_moe"])
def test_ep2_trains_as_ep1(tmp_path, counting_datasets, family):
    """Three dTRPO steps on 4 CPU ranks (DP4) at EP1 and EP2: every logged value equal (rel 1e-5),
    the balancing loss (sdar_moe) and the bias updates (llada2) included; the EP2 checkpoint then
    resumes at EP1, its experts resharded."""
    runs = {}

    def train_at(ep, run_dir, steps):
        return run_torchrun(str(REPO / "dtrpo_mega" / "train.py"), 4, f"data.path={counting_datasets(family)}",
                            f"model.family={family}", "model.overrides={num_layers: 2, moe: {bias_update_rate: 0.01}}",
                            f"parallel.expert_model_parallel_size={ep}", "train.global_batch_size=8",
                            "train.micro_batch_size=1", f"train.train_steps={steps}", "optimizer.lr=1e-3",
                            f"logging.dir={run_dir}", f"checkpoint.dir={run_dir}/ckpt", "logging.progress_bar=false")

    for ep in (1, 2):
        train_at(ep, tmp_path / f"ep{ep}", 3)
        runs[ep] = _losses(tmp_path / f"ep{ep}")
    assert sorted(runs[2]) == [1, 2, 3]
    assert "weights resharded, optimizer state reset" in train_at(1, tmp_path / "ep2", 4)
    assert 4 in _losses(tmp_path / "ep2")
    for step, row in runs[1].items():
        for key in ("loss", "rewards/margins", "grad_norm", "moe/expert_load_max", *(["moe/aux_loss"] * (
                family == "sdar_moe"))):
            assert runs[2][step][key] == pytest.approx(row[key], rel=1e-5, abs=1e-7), (step, key)


@pytest.mark.parametrize("family", ["llada2", "sdar_moe"])
def test_generate_decodes_a_converted_checkpoint(world_of_one, tmp_path, family, capsys):
    """A random checkpoint in the family's own Hugging Face format, imported, decodes with `dtrpo generate`
    (block KV cache on) exactly as with the cache off."""
    from dtrpo_mega import cli
    from dtrpo_mega.convert import import_hf
    from dtrpo_mega.data.synthetic import write_tokenizer

    load_tool("make_random_hf_checkpoint").main(["--out", str(tmp_path / "hf"), "--family", family, "--size", "tiny",
                                                 "--dtype", "fp32"])
    import_hf(tmp_path / "hf", tmp_path / "ckpt", log=lambda *_: None)
    tokenizer = str(write_tokenizer(tmp_path / "tok" / "tokenizer.json"))
    printed = {}
    for cache in ([], ["--no-kv-cache"]):
        capsys.readouterr()
        assert cli.main(["generate", "--ckpt", str(tmp_path / "ckpt"), "--tokenizer", tokenizer, "--prompt",
                         "count up from 3 :", "--max-new-tokens", "12", "--plain", *cache]) == 0
        printed[bool(cache)] = capsys.readouterr().out
    assert "tokens/forward" in printed[False]
    generated = {k: v.split("=== count up from 3 :")[1].split("\n\n")[0] for k, v in printed.items()}
    assert generated[False] == generated[True]


def test_models_of_different_depths_train_in_one_process(world_of_one):
    """megatron-core's MoE loss tracker is sized by the first model that records into it: each MoE
    model built starts its own, so a deeper model after a shallower one trains."""
    from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config

    tokens = torch.randint(0, 200, (1, 16))
    _, layout = collate([plain_sample(tokens[0])], MaskVariant.CAUSAL, 4, pad_id=0)
    for layers in (2, 4):
        model = build_model(model_config("sdar_moe", num_layers=layers)).train()
        model(tokens, layout).sum().backward()
