"""The `flex` attention backend: torch flex_attention with the block-sparse mask of `may_attend`.

torch.compile specializes flex_attention on its shapes, so a new row length would compile again
and, past dynamo's recompile limit, run eagerly (the unfused path, which materializes the scores).
Here q/k/v are padded to a bucket length instead: whole 128-token tiles (flex's block size) on a
ladder with at most two steps per octave, so an epoch of mixed lengths compiles a handful of
times. Each padding token is a segment of its own (negative id) and by the same predicate sees
only itself: padded tiles hold the diagonal only (almost no work; a padding query without a
padding key of its index, where queries and keys differ in number, attends nothing and gives 0),
no real token sees them, and the output is sliced back.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dtrpo_mega.diffusion.mask import TokenLayout, may_attend

TILE = 128  # flex_attention's default block size, the unit of its block sparsity
RECOMPILE_LIMIT = 64  # dynamo entries per compiled frame: buckets x grad mode x dtype, with room


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def bucket_length(n: int) -> int:
    """Smallest length >= n of the ladder TILE x (1, 2, 3, 4, 6, 8, 12, 16, 24, ...)."""
    if n < 1:
        raise ValueError(f"sequence length must be >= 1, got {n}")
    tiles = -(-n // TILE)
    octave = 1 << (tiles - 1).bit_length()  # smallest power of two >= tiles
    return (octave * 3 // 4 if tiles <= octave * 3 // 4 else octave) * TILE


def _padded(fields: tuple[Tensor, ...], length: int, device: torch.device) -> tuple[Tensor, ...]:
    """(positions, noisy, segments[, prompt segments]) [b, length]: padding tokens at position 0,
    clean, segments (and prompt segments) -1, -2, ...

    Always new tensors: query and key fields sharing storage would be another dynamo guard.
    """
    positions, noisy, *segment_fields = (t.to(device) for t in fields)
    pad = length - positions.shape[1]
    own = -torch.arange(1, pad + 1, device=device).expand(positions.shape[0], pad)
    return (F.pad(positions, (0, pad)), F.pad(noisy, (0, pad)),
            *(torch.cat([t, own.to(t.dtype)], dim=1) for t in segment_fields))


def block_mask(layout: TokenLayout, device: torch.device):
    """The layout's BlockMask at bucket lengths (built once per micro-batch, shared by all layers)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        queries, keys = layout.queries(), layout.keys()
        q_len, kv_len = bucket_length(queries[0].shape[1]), bucket_length(keys[0].shape[1])
        (qp, qn, qs, qr), (kp, kn, ks) = _padded(queries, q_len, device), _padded(keys, kv_len, device)
        variant, block_size = layout.variant, layout.block_size

        def mask_mod(b, h, q, k):
            return may_attend(variant, block_size, qp[b, q], qn[b, q], qs[b, q], qr[b, q], kp[b, k], kn[b, k],
                              ks[b, k])

        # Compiled on CUDA, so a long row's [b, q, kv] mask need not be materialized whole.
        return create_block_mask(mask_mod, B=qp.shape[0], H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device,
                                 _compile=device.type == "cuda")

    return layout.cached(("flex_block_mask", str(device)), build)


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


@functools.cache
def compiled_flex(backend: str | Callable = "inductor") -> Callable:
    """flex_attention compiled with static shapes (the bucket lengths keep them few)."""
    from torch.nn.attention.flex_attention import flex_attention

    _raise_recompile_limit()
    return torch.compile(flex_attention, dynamic=False, backend=backend)


def _to_length(t: Tensor, n: int) -> Tensor:
    """[b, heads, n, d], contiguous: compiled kernels specialize on strides too."""
    return (F.pad(t, (0, 0, 0, n - t.shape[2])) if t.shape[2] < n else t).contiguous()


def _eager_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def flex_attention(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout, scale: float,
                   kernel: Callable | None = None) -> Tensor:
    """Attention of q [b, heads, s_q, d] over k, v [b, kv_heads, s_k, d] -> [b, heads, s_q, d].

    `kernel`: flex_attention or a compiled form of it; default compiled on CUDA, eager (the unfused
    reference) elsewhere.
    """
    kernel = kernel or (compiled_flex() if q.is_cuda else _eager_flex())
    mask = block_mask(layout, q.device)
    (q_len, kv_len), s_q = mask.seq_lengths, q.shape[2]
    out = kernel(
        _to_length(q, q_len), _to_length(k, kv_len), _to_length(v, kv_len),
        block_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1],
    )
    return out[:, :, :s_q]
