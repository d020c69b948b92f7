"""GPU checks (skipped without CUDA): TE fused attention and compiled flex against the local backend."""

import pytest
import torch

from conftest import requires_cuda
from test_models import _backend_outputs

pytestmark = [requires_cuda, pytest.mark.gpu]

TOL = {torch.float32: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


@pytest.fixture
def fused_attention_only(monkeypatch):
    """TE may then only use cuDNN fused attention: it raises if that cannot take our bias mask."""
    pytest.importorskip("transformer_engine.pytorch")
    monkeypatch.setenv("NVTE_FLASH_ATTN", "0")
    monkeypatch.setenv("NVTE_UNFUSED_ATTN", "0")
    monkeypatch.setenv("NVTE_FUSED_ATTN", "1")


def assert_backend_matches_local(family, backend, dtype):
    """Logits and every gradient of `backend` against `local`, same weights and inputs."""
    out = _backend_outputs(family, ("local", backend), device="cuda", dtype=dtype)
    torch.testing.assert_close(out[backend][0], out["local"][0], **TOL[dtype])
    for name, grad in out["local"][1].items():
        torch.testing.assert_close(out[backend][1][name].float(), grad.float(), **TOL[dtype], msg=name)


@pytest.mark.parametrize("family", ["sdar", "llada"])
def test_te_matches_local_fp32(world_of_one, family):
    assert_backend_matches_local(family, "te", torch.float32)


@pytest.mark.parametrize("family", ["sdar", "llada"])
def test_te_fused_attention_takes_the_bias_mask_bf16(world_of_one, fused_attention_only, family):
    assert_backend_matches_local(family, "te", torch.bfloat16)


@pytest.mark.parametrize("family", ["sdar", "dream"])
def test_compiled_flex_matches_local_with_gradients(world_of_one, family):
    assert_backend_matches_local(family, "flex", torch.float32)
