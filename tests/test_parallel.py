"""TP=2, PP=2 and TP=2xPP=2 reproduce TP=1/PP=1 (log-probs and every gradient) on 4 CPU ranks, their
models and schedule over the runtime's own process groups; training builds its models in them."""

import pytest

from conftest import run_torchrun


@pytest.mark.parametrize(
    "family,tying",
    [
        ("sdar", "tied"),  # block diffusion, q/k norm (partial grads over TP), tied across PP stages
        pytest.param("fast_dllm_v2", "untied", marks=pytest.mark.slow),  # q/k/v bias, untied
        pytest.param("llada", "untied", marks=pytest.mark.slow),  # bidirectional, MHA
    ],
)
def test_layouts_match_single_process(tmp_path, family, tying):
    output = run_torchrun("parity.py", 4, family, str(tmp_path), tying)
    for layout in ("TP=2 PP=1", "TP=1 PP=2", "TP=2 PP=2"):
        assert f"PARITY OK family={family} {tying} {layout}" in output, output[-3000:]
    assert "EXPLICIT GROUPS OK TP=2 PP=2" in output, output[-3000:]  # the model and schedule use the runtime's groups


def test_training_builds_its_models_in_the_runtimes_groups(world_of_one, counting_data):
    from dtrpo_mega.config import load_config
    from dtrpo_mega.training.setup import build_policy, build_reference_model, setup_run

    run = setup_run(load_config(None, [f"data.path={counting_data}", "model.overrides={num_layers: 1}"]))
    policy = build_policy(run)
    for model in (policy, build_reference_model(run, policy)):
        assert model.pg_collection is run.runtime.pg_collection
        assert model.decoder.layers[0].self_attention.core_attention.cp_group is run.runtime.pg_collection.cp
