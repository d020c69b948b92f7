"""Name maps: megatron tensor name -> HF tensor name(s), per HF weight-naming scheme.

`hf` is the `transformers` naming that Llama, Qwen2, Qwen3 and the dLLMs built on them share
(Fast-dLLM v2, SDAR, Dream). `llada` is LLaDA's OLMo-derived naming, checked against the public
LLaDA modeling file (`LLaDALlamaBlock`): `ff_proj` goes through the activation (the gate) and is
multiplied by `up_proj`; the block's `ff_out` is the down projection, the model-level
`transformer.ff_out` is the output layer (absent when `weight_tying`).
"""

from __future__ import annotations

from dtrpo_mega.convert.mapping import QKV, Direct, GatedMLP, Mapping, VocabRows
from dtrpo_mega.convert.megatron_layout import megatron_tensors
from dtrpo_mega.models.config import DLLMConfig

_QKV_W = "decoder.layers.*.self_attention.linear_qkv.weight"
_QKV_B = "decoder.layers.*.self_attention.linear_qkv.bias"
_FC1 = "decoder.layers.*.mlp.linear_fc1.weight"
_EMBED = "embedding.word_embeddings.weight"
_OUTPUT = "output_layer.weight"

KINDS: dict[str, type[Mapping]] = {_EMBED: VocabRows, _OUTPUT: VocabRows, _QKV_W: QKV, _QKV_B: QKV, _FC1: GatedMLP}

NAMINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "hf": {
        _EMBED: ("model.embed_tokens.weight",),
        "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight": ("model.layers.*.input_layernorm.weight",),
        _QKV_W: tuple(f"model.layers.*.self_attn.{p}_proj.weight" for p in "qkv"),
        _QKV_B: tuple(f"model.layers.*.self_attn.{p}_proj.bias" for p in "qkv"),
        "decoder.layers.*.self_attention.q_layernorm.weight": ("model.layers.*.self_attn.q_norm.weight",),
        "decoder.layers.*.self_attention.k_layernorm.weight": ("model.layers.*.self_attn.k_norm.weight",),
        "decoder.layers.*.self_attention.linear_proj.weight": ("model.layers.*.self_attn.o_proj.weight",),
        "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": ("model.layers.*.post_attention_layernorm.weight",),
        _FC1: ("model.layers.*.mlp.gate_proj.weight", "model.layers.*.mlp.up_proj.weight"),
        "decoder.layers.*.mlp.linear_fc2.weight": ("model.layers.*.mlp.down_proj.weight",),
        "decoder.final_layernorm.weight": ("model.norm.weight",),
        _OUTPUT: ("lm_head.weight",),
    },
    "llada": {
        _EMBED: ("model.transformer.wte.weight",),
        "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight": ("model.transformer.blocks.*.attn_norm.weight",),
        _QKV_W: tuple(f"model.transformer.blocks.*.{p}_proj.weight" for p in "qkv"),
        _QKV_B: tuple(f"model.transformer.blocks.*.{p}_proj.bias" for p in "qkv"),
        "decoder.layers.*.self_attention.linear_proj.weight": ("model.transformer.blocks.*.attn_out.weight",),
        "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": ("model.transformer.blocks.*.ff_norm.weight",),
        _FC1: ("model.transformer.blocks.*.ff_proj.weight", "model.transformer.blocks.*.up_proj.weight"),
        "decoder.layers.*.mlp.linear_fc2.weight": ("model.transformer.blocks.*.ff_out.weight",),
        "decoder.final_layernorm.weight": ("model.transformer.ln_f.weight",),
        _OUTPUT: ("model.transformer.ff_out.weight",),
    },
}


def name_map(naming: str, cfg: DLLMConfig) -> dict[str, Mapping]:
    """Megatron tensor name -> its mapping, for every tensor of this model."""
    names = NAMINGS[naming]
    missing = [t.name for t in megatron_tensors(cfg) if t.name not in names]
    if missing:
        raise ValueError(f"the {naming!r} weight naming has no tensors for {missing} (model config: qk_norm={cfg.qk_norm})")
    return {t.name: KINDS.get(t.name, Direct)(t.name, names[t.name]) for t in megatron_tensors(cfg)}
