"""Model FLOPs of a training step, for MFU, and the mask's tile geometry they rest on.

Forward FLOPs (2 per multiply-add) of a row of s tokens:
- matmuls per token: per layer the q/k/v projections 2·h·d·(H + 2G), the output projection
  2·H·d·h and the SwiGLU MLP 6·h·f (gate and up 2·h·2f, down 2·f·h); once, the output layer
  2·h·V (V: the padded vocabulary the model multiplies by). h hidden size, f FFN size, H query
  heads, G KV groups, d head size.
- a mixture of experts counts what a token runs (its active parameters): per MoE layer, in place
  of the dense MLP, its k routed experts k·6·h·f_e, the shared experts 6·h·f_s and the router
  2·h·E (f_e one expert's FFN size, f_s all shared experts', E experts); the first dense layers
  keep 6·h·f.
- attention per layer: 4·H·d per (query, key) pair the mask allows (QK^T and PV), padding
  queries excluded: the useful pairs, not what a kernel computes (all tiles, or whole
  non-empty tiles).
A training step is 3x the forward (the backward does two matmuls per forward one). Activation
recomputation's extra forward is not counted: MFU counts model FLOPs; hardware FLOPs (HFU)
would add one forward of the recomputed layers. Norms, rotary, softmax, activations and the
experts' token permutation are not counted. `parameter_counts`: total vs active parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dtrpo_mega.diffusion.mask import PAD_SEGMENT, TokenLayout, may_attend
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.perf.memory import stage_parameters

TILE = 128

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s; the first name part found in the device name wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H200 NVL", None),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", None),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from torch.cuda.get_device_name; None when not in the table."""
    for part, tflops in PEAK_BF16_TFLOPS:
        if part.lower() in device_name.lower():
            return None if tflops is None else tflops * 1e12
    return None


def _head_dim(cfg: DLLMConfig) -> int:
    return cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads


def _mlp_flops(cfg: DLLMConfig, layer: int) -> int:
    """Forward FLOPs of one token through layer `layer`'s MLP: dense, or its active experts and router."""
    h, m = cfg.hidden_size, cfg.moe
    if m is None or not m.is_moe_layer(layer):
        return 6 * h * cfg.ffn_hidden_size
    return 6 * h * (m.topk * m.ffn_hidden_size + m.shared_expert_ffn_hidden_size) + 2 * h * m.num_experts


def dense_flops_per_token(cfg: DLLMConfig, vocab: int | None = None) -> int:
    """Forward matmul FLOPs of one token (active experts only), attention scores excluded; `vocab`
    default: padded at TP=1."""
    h, d = cfg.hidden_size, _head_dim(cfg)
    heads, groups = cfg.num_attention_heads, cfg.num_query_groups
    attention = 2 * h * d * (heads + 2 * groups) + 2 * heads * d * h
    mlp = sum(_mlp_flops(cfg, i) for i in range(cfg.num_layers))
    return cfg.num_layers * attention + mlp + 2 * h * (vocab or cfg.padded_vocab(1))


def parameter_counts(cfg: DLLMConfig) -> tuple[int, int]:
    """Total and active parameters (the model as built at TP=1, padded vocabulary, embedding and
    output layer once each, tied: once): active leaves out the routed experts a token does not run."""
    total = stage_parameters(cfg, 1, 1, 0)
    m = cfg.moe
    if m is None:
        return total, total
    idle = len(cfg.moe_layers) * (m.num_experts - m.topk) * 3 * m.ffn_hidden_size * cfg.hidden_size
    return total, total - idle


def attention_flops_per_pair(cfg: DLLMConfig) -> int:
    """Forward FLOPs of one allowed (query, key) pair over all layers and heads."""
    return 4 * cfg.num_attention_heads * _head_dim(cfg) * cfg.num_layers


def _pad_to_tiles(fields: tuple[Tensor, ...], tile: int, segment: int) -> tuple[Tensor, ...]:
    positions, noisy, *segment_fields = fields
    pad = -positions.shape[1] % tile
    return (F.pad(positions, (0, pad)), F.pad(noisy, (0, pad)),
            *(F.pad(t, (0, pad), value=segment) for t in segment_fields))


def tile_counts(layout: TokenLayout, tile: int = TILE, rows: int = 512) -> Tensor:
    """Allowed (query, key) pairs per tile, int64 [b, ceil(s_q / tile), ceil(s_k / tile)].

    Padding queries count nothing. Built `rows` queries at a time, so the s x s mask never exists.
    """
    if rows % tile:
        raise ValueError(f"rows ({rows}) must be a multiple of the tile ({tile})")
    # Queries up to whole tiles are padding; keys up to whole tiles a segment no query has.
    qp, qn, qs, qr = _pad_to_tiles(layout.queries(), tile, PAD_SEGMENT)
    kp, kn, ks = _pad_to_tiles(layout.keys(), tile, int(layout.segments.min()) - 1)
    key = lambda t: t[:, None, :]  # noqa: E731
    chunks = []
    for start in range(0, qp.shape[1], rows):
        query = lambda t: t[:, start : start + rows, None]  # noqa: E731
        allowed = may_attend(layout.variant, layout.block_size, query(qp), query(qn), query(qs), query(qr), key(kp),
                             key(kn), key(ks))
        allowed &= query(qs) != PAD_SEGMENT
        b, n, s_k = allowed.shape
        chunks.append(allowed.view(b, n // tile, tile, s_k // tile, tile).sum(2, dtype=torch.int64).sum(-1))
    return torch.cat(chunks, dim=1)


def allowed_pairs(layout: TokenLayout) -> int:
    """(query, key) pairs the mask allows over the micro-batch, padding queries excluded."""
    return int(tile_counts(layout).sum())


def forward_flops(cfg: DLLMConfig, tokens: int, pairs: int, vocab: int | None = None) -> int:
    """Model forward FLOPs of `tokens` tokens whose mask allows `pairs` (query, key) pairs."""
    return tokens * dense_flops_per_token(cfg, vocab) + pairs * attention_flops_per_pair(cfg)


def training_step_flops(cfg: DLLMConfig, tokens: int, pairs: int, vocab: int | None = None) -> int:
    """Forward and backward model FLOPs (3x the forward; recomputation not counted)."""
    return 3 * forward_flops(cfg, tokens, pairs, vocab)
