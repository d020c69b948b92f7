"""Rotary position embeddings from explicit per-token positions.

megatron-core's rope derives positions from the sequence index, but both halves of `[z~ ; y0]`
must use the sample's own positions, so rope is applied inside the core attention instead, with
the tables built once per micro-batch from `TokenLayout.positions`. The formula is the
non-interleaved ("rotate half") form used by Qwen2/Qwen3/LLaMA/LLaDA checkpoints, computed in
float32 and cast to the activation dtype, as Hugging Face does. Partial rope (Ling 2.0's
`partial_rotary_factor`) rotates the leading `rotary_dim` channels of each head by tables built
for that width and passes the rest through.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of shape [s, b, 1, head_dim] (float32) for positions [b, s]; `head_dim` is the
    rotated width."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # [b, s, head_dim / 2]
    emb = torch.cat([freqs, freqs], dim=-1).transpose(0, 1)[:, :, None, :]
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the leading cos.shape[-1] channels of x [s, b, heads, head_dim] by the tables of
    `rotary_tables`; the rest pass through."""
    width = cos.shape[-1]
    if width < x.shape[-1]:
        return torch.cat([apply_rotary(x[..., :width], cos, sin), x[..., width:]], dim=-1)
    half = width // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
