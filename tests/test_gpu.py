"""GPU checks (skipped without CUDA): TE fused attention and compiled flex against the local backend."""

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_cuda
from test_flex import _layout
from test_models import _backend_outputs

pytestmark = [requires_cuda, pytest.mark.gpu]

TOL = {torch.float32: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


@pytest.fixture
def transformer_engine():
    pytest.importorskip("transformer_engine.pytorch",
                        reason="Transformer Engine is not installed (no prebuilt wheel of its PyTorch extension)")


@pytest.fixture
def fused_attention_only(transformer_engine, monkeypatch):
    """TE may then only use cuDNN fused attention: it raises if that cannot take our bias mask."""
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
def test_te_matches_local_fp32(world_of_one, transformer_engine, family):
    assert_backend_matches_local(family, "te", torch.float32)


@pytest.mark.parametrize("family", ["sdar", "llada"])
def test_te_fused_attention_takes_the_bias_mask_bf16(world_of_one, fused_attention_only, family):
    assert_backend_matches_local(family, "te", torch.bfloat16)


@pytest.mark.parametrize("family", ["sdar", "dream"])
def test_compiled_flex_matches_local_with_gradients(world_of_one, family):
    assert_backend_matches_local(family, "flex", torch.float32)


def test_compiled_flex_compiles_once_per_bucket_with_gradients():
    """Five row lengths in two buckets: two inductor compilations, each matching dense attention."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from dtrpo_mega.models.flex import bucket_length, compiled_flex, flex_attention

    counter = CompileCounterWithBackend("inductor")
    kernel = compiled_flex(counter)
    lengths = [140, 200, 250, 300, 380]
    buckets = set()
    for i, n in enumerate(lengths):
        layout = _layout(n, seed=i).to("cuda")
        buckets.add(bucket_length(layout.seq_len))
        g = torch.Generator(device="cuda").manual_seed(i)
        q, k, v = (torch.randn(2, heads, layout.seq_len, 64, device="cuda", generator=g, requires_grad=True)
                   for heads in (4, 2, 2))
        out = flex_attention(q, k, v, layout, scale=0.125, kernel=kernel)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.allowed(), scale=0.125, enable_gqa=True)
        ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
        torch.testing.assert_close(out, ref, **TOL[torch.float32])
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, **TOL[torch.float32])
    assert len(buckets) == 2
    assert counter.frame_count == len(buckets), f"{counter.frame_count} compilations for {len(buckets)} buckets"


@pytest.mark.parametrize("family", ["llada2", "sdar_moe"])
def test_te_grouped_experts_load_and_match_the_sequential_experts(world_of_one, transformer_engine, tmp_path, family):
    """The TE spec's grouped-GEMM experts keep the local spec's checkpoint keys (a CPU checkpoint
    loads on GPU and back) and give its logits."""
    from dtrpo_mega.checkpoint.model import load_model, save_model
    from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config

    cfg = model_config(family, attention_backend="local")
    local = build_model(cfg, transformer_impl="local", seed=3).eval()
    save_model(local, tmp_path / "ckpt")
    grouped = build_model(cfg, transformer_impl="transformer_engine").eval()
    load_model(grouped, tmp_path / "ckpt")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size - 1, (2, 24), generator=g)
    _, layout = collate([plain_sample(t) for t in tokens], MaskVariant.CAUSAL, cfg.block_size, pad_id=0)
    with torch.no_grad():
        want, got = (m(tokens.cuda(), layout.to("cuda")) for m in (local, grouped))
    torch.testing.assert_close(got, want, **TOL[torch.float32])
