"""Activation recomputation settings (megatron's names and meaning).

- `none`: keep every activation for the backward pass.
- `selective`: recompute only the core attention (the s x s part) in the backward pass.
- `full`: recompute whole transformer layers; `method=uniform` checkpoints groups of
  `num_layers` layers (storing each group's input), `method=block` checkpoints the first
  `num_layers` layers of each pipeline stage and keeps the rest.

`apply_recompute` switches on megatron-core's own recompute branches (the block's full-recompute
call, routed to ours by `compat.route_full_recompute`; Attention's `_checkpointed_attention_forward`;
taken in training mode only) and runs them with torch's non-reentrant `checkpoint`: megatron's
`tensor_parallel.checkpoint` saves its inputs with `save_for_backward`, which rejects the
`TokenLayout` passed as `attention_mask`, and reads the CUDA RNG state. Dropout is 0 in these
models, so recomputation replays no random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import partial

from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dtrpo_mega.compat import route_full_recompute


class RecomputeGranularity(str, Enum):
    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class RecomputeMethod(str, Enum):
    UNIFORM = "uniform"
    BLOCK = "block"


@dataclass(frozen=True)
class RecomputeConfig:
    granularity: RecomputeGranularity = RecomputeGranularity.NONE
    method: RecomputeMethod = RecomputeMethod.UNIFORM
    num_layers: int = 1


def checkpoint_spans(cfg: RecomputeConfig, stage_layers: int) -> list[tuple[int, int, bool]]:
    """Full recompute of a stage's layers as `(start, end, recomputed)` runs, in order."""
    k = cfg.num_layers
    if not 1 <= k <= stage_layers:
        raise ValueError(f"train.recompute_num_layers={k} must be between 1 and the {stage_layers} layers of a "
                         "pipeline stage")
    if cfg.method == RecomputeMethod.UNIFORM:  # the last group may be shorter
        return [(start, min(start + k, stage_layers), True) for start in range(0, stage_layers, k)]
    return [(i, i + 1, True) for i in range(k)] + ([(k, stage_layers, False)] if k < stage_layers else [])


def apply_recompute(model, cfg: RecomputeConfig) -> None:
    """Recompute activations of `model` (one pipeline stage of a GPTModel) as `cfg` says."""
    if cfg.granularity == RecomputeGranularity.NONE:
        return
    config, block = model.config, model.decoder
    if config.fp8 or config.fp4:
        raise ValueError("activation recomputation (train.recompute_granularity) is not supported with fp8/fp4")
    if cfg.granularity == RecomputeGranularity.SELECTIVE:
        for layer in block.layers:
            attention = layer.self_attention
            attention.checkpoint_core_attention = True
            attention._checkpointed_attention_forward = partial(_checkpointed_core_attention, attention.core_attention)
        config.recompute_granularity = "selective"
        return
    route_full_recompute(block, partial(_checkpointed_layers, block.layers, checkpoint_spans(cfg, len(block.layers))))
    config.recompute_granularity, config.recompute_method, config.recompute_num_layers = (
        "full", cfg.method.value, cfg.num_layers)


def _checkpointed_core_attention(core_attention, query, key, value, attention_mask, rotary_pos_emb=None,
                                 attn_mask_type=None, attention_bias=None, packed_seq_params=None) -> Tensor:
    """Attention's selective-recompute branch (rope is applied inside our core attention)."""
    return checkpoint(
        core_attention, query, key, value, attention_mask, attn_mask_type=attn_mask_type,
        attention_bias=attention_bias, packed_seq_params=packed_seq_params, use_reentrant=False,
    )


def _checkpointed_layers(layers, spans, hidden_states: Tensor, use_inner_quantization_context: bool = False,
                         extract_layer_indices=None, layer_offset: int = 0, **layer_kwargs) -> Tensor:
    """TransformerBlock's full-recompute branch: each recomputed run keeps only its input.
    (`use_inner_quantization_context` is megatron's fp8/fp4 flag, refused in `apply_recompute`;
    megatron-core 0.19 adds `extract_layer_indices` for intermediate outputs, which we never ask for.)"""
    if extract_layer_indices:
        raise ValueError("full recompute returns no intermediate layer outputs (extract_layer_indices)")
    for start, end, recomputed in spans:
        if recomputed:
            hidden_states = checkpoint(_run_layers, layers[start:end], hidden_states, use_reentrant=False,
                                       **layer_kwargs)
        else:
            hidden_states = _run_layers(layers[start:end], hidden_states, **layer_kwargs)
    return hidden_states


def _run_layers(layers, hidden_states: Tensor, **layer_kwargs) -> Tensor:
    for layer in layers:  # a decoder-only block: the cross-attention context stays None
        hidden_states, _ = layer(hidden_states=hidden_states, inference_context=None, **layer_kwargs)
    return hidden_states
