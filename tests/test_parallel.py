"""TP=2, PP=2 and TP=2xPP=2 reproduce TP=1/PP=1 (log-probs and every gradient) on 4 CPU ranks."""

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
