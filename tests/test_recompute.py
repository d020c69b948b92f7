"""Activation recomputation: same loss and gradients as none, fewer saved activations, errors name the setting."""

import pytest
import torch

from dtrpo_mega.config import load_config
from dtrpo_mega.diffusion.mask import block_diffusion_sample, collate
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity, RecomputeMethod, checkpoint_spans
from dtrpo_mega.perf.activations import SavedActivations
from conftest import run_torchrun

FULL = RecomputeGranularity.FULL
# recompute setting -> how many times each of the 4 layers runs its forward in one training step
RECOMPUTES = {
    "none": (RecomputeConfig(), [1, 1, 1, 1]),
    "selective": (RecomputeConfig(RecomputeGranularity.SELECTIVE), [1, 1, 1, 1]),
    "full uniform 1": (RecomputeConfig(FULL, RecomputeMethod.UNIFORM, 1), [2, 2, 2, 2]),
    "full uniform 2": (RecomputeConfig(FULL, RecomputeMethod.UNIFORM, 2), [2, 2, 2, 2]),
    "full uniform 3": (RecomputeConfig(FULL, RecomputeMethod.UNIFORM, 3), [2, 2, 2, 2]),
    "full block 1": (RecomputeConfig(FULL, RecomputeMethod.BLOCK, 1), [2, 1, 1, 1]),
}


def _inputs(cfg):
    g = torch.Generator().manual_seed(3)
    samples = []
    for n, prompt in [(70, 12), (52, 9)]:
        clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
        noisy = torch.where((torch.arange(n) >= prompt) & (torch.rand(n, generator=g) < 0.6), cfg.mask_token_id, clean)
        samples.append(block_diffusion_sample(noisy, clean, prompt, cfg.block_size))
    return collate(samples, cfg.attention, cfg.block_size, pad_id=0)


def _train_step(model, tokens, layout):
    """Loss, gradients, saved-activation bytes, per-layer and per-core-attention forward calls
    (pre-hooks: a recomputation stops as soon as it has what the backward needs)."""
    layer_calls = [0] * len(model.decoder.layers)
    attention_calls = [0] * len(model.decoder.layers)
    for i, layer in enumerate(model.decoder.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: layer_calls.__setitem__(i, layer_calls[i] + 1))
        layer.self_attention.core_attention.register_forward_pre_hook(
            lambda *_, i=i: attention_calls.__setitem__(i, attention_calls[i] + 1))
    with SavedActivations(model) as saved:
        loss = model(tokens, layout, labels=tokens).sum()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return loss.detach(), grads, saved.bytes, layer_calls, attention_calls


@pytest.fixture(scope="module")
def steps(world_of_one):
    cfg = model_config("fast_dllm_v2", num_layers=4)
    tokens, layout = _inputs(cfg)
    weights, results = None, {}
    for name, (recompute, _) in RECOMPUTES.items():
        model = build_model(cfg, recompute=recompute)
        weights = weights or model.state_dict()
        model.load_state_dict(weights)
        results[name] = _train_step(model, tokens, layout)
    return results


@pytest.mark.parametrize("name", [n for n in RECOMPUTES if n != "none"])
def test_recompute_gives_the_same_loss_and_gradients(steps, name):
    loss, grads, *_ = steps[name]
    ref_loss, ref_grads, *_ = steps["none"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert grads.keys() == ref_grads.keys()
    for param, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[param], rtol=1e-6, atol=1e-9, msg=f"{name}: {param}")


@pytest.mark.parametrize("name", RECOMPUTES)
def test_recompute_reruns_what_it_says(steps, name):
    *_, layer_calls, attention_calls = steps[name]
    expected_layers = RECOMPUTES[name][1]
    assert layer_calls == expected_layers
    assert attention_calls == ([2] * 4 if name == "selective" else expected_layers)


def test_recompute_saves_fewer_activations(steps):
    saved = {name: result[2] for name, result in steps.items()}
    assert (saved["full uniform 2"] < saved["full uniform 1"] < saved["full block 1"] < saved["selective"]
            < saved["none"])
    assert saved["full uniform 1"] * 3 < saved["none"]


def test_eval_mode_does_not_recompute(world_of_one):
    """As in megatron-core, the recompute branches are taken in training mode only."""
    cfg = model_config("fast_dllm_v2", num_layers=2)
    tokens, layout = _inputs(cfg)
    model = build_model(cfg, recompute=RecomputeConfig(FULL)).eval()
    *_, layer_calls, _ = _train_step(model, tokens, layout)
    assert layer_calls == [1, 1]


def test_checkpoint_spans():
    assert checkpoint_spans(RecomputeConfig(FULL, RecomputeMethod.UNIFORM, 2), 5) == [(0, 2, True), (2, 4, True),
                                                                                      (4, 5, True)]
    assert checkpoint_spans(RecomputeConfig(FULL, RecomputeMethod.BLOCK, 2), 5) == [(0, 1, True), (1, 2, True),
                                                                                    (2, 5, False)]
    assert checkpoint_spans(RecomputeConfig(FULL, RecomputeMethod.BLOCK, 3), 3) == [(0, 1, True), (1, 2, True),
                                                                                    (2, 3, True)]


def test_num_layers_beyond_a_pipeline_stage_is_refused(world_of_one):
    cfg = model_config("fast_dllm_v2", num_layers=2)
    for method in RecomputeMethod:
        with pytest.raises(ValueError, match=r"train\.recompute_num_layers=3 must be between 1 and the 2 layers"):
            build_model(cfg, recompute=RecomputeConfig(FULL, method, 3))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.recompute_num_layers=2"],
         r"train\.recompute_num_layers=2 applies to train\.recompute_granularity=full only"),
        (["train.recompute_granularity=selective", "train.recompute_num_layers=1"],
         r"train\.recompute_num_layers=1 applies to"),
        (["train.recompute_granularity=full", "train.recompute_num_layers=0"],
         r"train\.recompute_num_layers must be >= 1, got 0"),
        (["train.recompute_granularity=selective", "train.recompute_method=block"],
         r"train\.recompute_method=block applies to train\.recompute_granularity=full"),
        (["train.recompute_granularity=partial"], r"train\.recompute_granularity"),
    ],
)
def test_recompute_settings_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides).validate(1)


def test_valid_recompute_settings():
    cfg = load_config(None, ["train.recompute_granularity=full", "train.recompute_method=block",
                             "train.recompute_num_layers=2"])
    cfg.validate(1)
    assert cfg.train.recompute == RecomputeConfig(FULL, RecomputeMethod.BLOCK, 2)
    assert load_config(None, ["train.recompute_granularity=full"]).train.recompute.num_layers == 1


@pytest.mark.slow
def test_recompute_parity_across_layouts():
    out = run_torchrun("recompute_parity.py", 4)
    assert out.count("RECOMPUTE OK") == 2
