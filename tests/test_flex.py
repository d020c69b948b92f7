"""The flex backend: bucket lengths, padding inside the backend, compilations per epoch, `auto`."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

from dtrpo_mega.diffusion.mask import MaskVariant, TokenLayout, block_diffusion_sample, collate
from dtrpo_mega.models import attention
from dtrpo_mega.models.attention import AttentionBackend, resolve_backend
from dtrpo_mega.models.flex import bucket_length, compiled_flex, flex_attention


def test_bucket_ladder():
    assert [bucket_length(n) for n in (1, 128, 129, 256, 257, 385, 513, 769, 1025, 3000)] == [
        128, 128, 256, 256, 384, 512, 768, 1024, 1536, 3072,
    ]
    lengths = range(1, 40_000)
    assert all(n <= bucket_length(n) <= max(128, 1.5 * n + 128) and bucket_length(n) % 128 == 0 for n in lengths)
    assert len({bucket_length(n) for n in range(4097, 8193)}) == 2  # two buckets per octave
    with pytest.raises(ValueError, match="sequence length"):
        bucket_length(0)


def _layout(n: int, batch: int = 2, seed: int = 0) -> TokenLayout:
    """Two [z~ ; y0] rows (block 32) of up to n tokens, right-padded to a common length."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(batch):
        length = n // 2 - 7 * i
        tokens = torch.randint(0, 100, (length,), generator=g)
        samples.append(block_diffusion_sample(tokens, tokens, prompt_len=length // 5, block_size=32))
    return collate(samples, MaskVariant.BLOCK_DIFFUSION, 32, pad_id=0)[1]


def _qkv(batch: int, s_q: int, s_k: int, seed: int = 0):
    """q [b, 4, s_q, 16], k and v [b, 2, s_k, 16], permuted views of [s, b, heads, 16] as in the model."""
    g = torch.Generator().manual_seed(seed)
    view = lambda s, heads: torch.randn(s, batch, heads, 16, generator=g).permute(1, 2, 0, 3)  # noqa: E731
    return view(s_q, 4), view(s_k, 2), view(s_k, 2)


def _dense(q, k, v, layout):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.allowed(), scale=0.25, enable_gqa=True)


def test_padding_inside_matches_dense_attention():
    layout = _layout(300)  # 300 tokens, padded inside the backend to 384
    q, k, v = _qkv(2, layout.seq_len, layout.seq_len)
    out = flex_attention(q, k, v, layout, scale=0.25)
    assert out.shape == q.shape
    torch.testing.assert_close(out, _dense(q, k, v, layout), rtol=1e-5, atol=1e-5)


def test_query_subset_with_unequal_padding():
    """Context-parallel view: fewer queries than keys, padded to different buckets."""
    full = _layout(300)
    query_index = torch.arange(0, full.seq_len, 3)
    layout = TokenLayout(full.positions, full.noisy, full.segments, full.variant, full.block_size,
                         query_index=query_index)
    q, k, v = _qkv(2, query_index.numel(), full.seq_len)
    torch.testing.assert_close(flex_attention(q, k, v, layout, scale=0.25), _dense(q, k, v, layout), rtol=1e-5,
                               atol=1e-5)


def test_an_epoch_of_mixed_lengths_compiles_once_per_bucket():
    counter = CompileCounter()  # dynamo's frame compilations; runs the captured graph eagerly
    kernel = compiled_flex(counter)
    # 13 row lengths; 544: 512 tokens, no padding
    lengths = [300, 325, 350, 380, 400, 450, 500, 544, 550, 600, 650, 700, 750, 310, 505]
    buckets = set()
    with torch.no_grad():
        for i, n in enumerate(lengths):
            layout = _layout(n, seed=i)
            buckets.add(bucket_length(layout.seq_len))
            q, k, v = _qkv(2, layout.seq_len, layout.seq_len, seed=i)
            out = flex_attention(q, k, v, layout, scale=0.25, kernel=kernel)
            if i % 5 == 0:
                torch.testing.assert_close(out, _dense(q, k, v, layout), rtol=1e-5, atol=1e-5)
    assert len(buckets) == 3
    assert counter.frame_count == len(buckets), f"{counter.frame_count} compilations for {len(buckets)} buckets"
    assert torch._dynamo.config.recompile_limit >= 64


def test_auto_is_flex_on_cuda_and_local_on_cpu(monkeypatch):
    assert resolve_backend("auto") == (AttentionBackend.FLEX if torch.cuda.is_available() else AttentionBackend.LOCAL)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == AttentionBackend.FLEX
    monkeypatch.setattr(attention, "flex_available", lambda: False)
    assert resolve_backend("auto") == AttentionBackend.LOCAL
