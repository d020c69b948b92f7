"""Source formats: the Hugging Face architectures we read, how `--family auto` picks one, and how
a `config.json` becomes a `DLLMConfig` (and, for checkpoints born in training, the reverse).

Architecture names and config fields, from the public checkpoints' `config.json`:
Fast-dLLM v2 `Fast_dLLM_QwenForCausalLM` / `Fast_dLLM_Qwen` (block size `bd_size`; its mask token
151665 is the tokenizer's `|<MASK>|`, read from config.json only if present); SDAR
`SDARForCausalLM` / `sdar` (Qwen3 layout);
LLaDA and LLaDA 1.5 `LLaDAModelLM` / `llada` (OLMo-style fields `d_model`, `n_heads`,
`n_kv_heads`, `mlp_hidden_size`, `embedding_size`, `weight_tying`, `mask_token_id`); Dream
`DreamModel` / `Dream` (Qwen2 layout, `mask_token_id`). Whether SDAR's config.json carries a
`block_size` field was not verified: it is read when present, else the family default is used.

Plain Llama / Qwen2 / Qwen3 become the dLLM family of the same layout unless told otherwise:
qwen2 -> fast_dllm_v2 (Fast-dLLM v2 starts from Qwen2.5), qwen3 -> sdar (SDAR starts from Qwen3),
llama -> llada (LLaDA is LLaMA-shaped). The original architecture is kept for export. They have
no mask token, so `--mask-token-id` names one (Fast-dLLM v2 and SDAR use the first unused
embedding row of their base vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families import FAMILY_TRAITS


@dataclass(frozen=True)
class SourceFormat:
    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]  # lowercase
    family: str  # the dLLM family it becomes unless told otherwise
    naming: str  # weight naming scheme, see name_maps.NAMINGS
    qkv_bias: bool = False  # Qwen2 attention always has q/k/v biases
    qk_norm: bool = False  # Qwen3 attention: per-head RMSNorm of q and k
    block_size_key: str | None = None  # config.json field holding the block size


FORMATS: dict[str, SourceFormat] = {f.name: f for f in (
    SourceFormat("fast_dllm_v2", ("Fast_dLLM_QwenForCausalLM",), ("fast_dllm_qwen",), "fast_dllm_v2", "hf", qkv_bias=True,
                 block_size_key="bd_size"),
    SourceFormat("sdar", ("SDARForCausalLM",), ("sdar",), "sdar", "hf", qk_norm=True, block_size_key="block_size"),
    SourceFormat("llada", ("LLaDAModelLM",), ("llada",), "llada", "llada"),
    SourceFormat("dream", ("DreamModel",), ("dream",), "dream", "hf", qkv_bias=True),
    SourceFormat("llama", ("LlamaForCausalLM",), ("llama",), "llada", "hf"),
    SourceFormat("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), "fast_dllm_v2", "hf", qkv_bias=True),
    SourceFormat("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), "sdar", "hf", qk_norm=True),
)}


def supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.architectures)})" for f in FORMATS.values())


def detect(config: dict) -> tuple[SourceFormat, str]:
    """The format of a config.json, and why (from `architectures`, else `model_type`)."""
    architectures = config.get("architectures") or []
    model_type = str(config.get("model_type", "")).lower()
    for fmt in FORMATS.values():
        if any(a in fmt.architectures for a in architectures):
            return fmt, f"architectures={architectures}"
    for fmt in FORMATS.values():
        if model_type in fmt.model_types:
            return fmt, f"model_type={config['model_type']!r}"
    raise ValueError(
        f"unknown architecture {architectures} (model_type {config.get('model_type')!r}); supported: {supported()}. "
        "Pass --family to read it as one of them."
    )


def get_format(name: str) -> SourceFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown source format {name!r}; supported: {supported()}")
    return FORMATS[name]


def _reject(problems: list[str], where: str) -> None:
    if problems:
        raise ValueError(f"{where} uses features the dLLM model does not have: " + "; ".join(problems))


def _hf_structure(fmt: SourceFormat, c: dict) -> dict:
    rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    problems = []
    if c.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={c['hidden_act']!r} (only silu)")
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (only plain rope)")
    if c.get("attention_bias") and not fmt.qkv_bias:
        problems.append("attention_bias=true (it adds an o_proj bias)")
    problems += [f"{flag}=true" for flag in ("mlp_bias", "use_sliding_window") if c.get(flag)]
    _reject(problems, f"config.json ({fmt.name})")
    heads = c["num_attention_heads"]
    return dict(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], ffn_hidden_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_attention_heads=heads,
        num_query_groups=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        rope_theta=float(c.get("rope_theta", rope.get("rope_theta", 10000.0))),
        norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=fmt.qkv_bias, qk_norm=fmt.qk_norm,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=c.get("max_position_embeddings", 32768),
    )


def _llada_structure(c: dict) -> dict:
    expected = dict(block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True, block_group_size=1,
                    layer_norm_with_affine=True, attention_layer_norm=False, include_bias=False, bias_for_layer_norm=False,
                    scale_logits=False, input_emb_norm=False, alibi=False)
    differs = lambda value, want: value != want and not (want is False and value is None)  # noqa: E731
    _reject([f"{k}={c[k]!r} (need {v!r})" for k, v in expected.items() if k in c and differs(c[k], v)], "config.json (llada)")
    heads = c["n_heads"]
    return dict(
        vocab_size=c.get("embedding_size") or c["vocab_size"], hidden_size=c["d_model"],
        ffn_hidden_size=c.get("mlp_hidden_size") or c["mlp_ratio"] * c["d_model"], num_layers=c["n_layers"],
        num_attention_heads=heads, num_query_groups=c.get("n_kv_heads") or (1 if c.get("multi_query_attention") else heads),
        rope_theta=float(c.get("rope_theta", 10000.0)), norm_eps=c.get("rms_norm_eps", 1e-5),
        qkv_bias=bool(c.get("include_qkv_bias", False)), qk_norm=False,
        tie_embeddings=bool(c.get("weight_tying", False)), max_position_embeddings=c.get("max_sequence_length", 4096),
    )


def dllm_config(fmt: SourceFormat, hf_config: dict, family: str | None = None, mask_token_id: int | None = None) -> DLLMConfig:
    """The DLLMConfig of a source config.json: structure from the file, dLLM traits from the family."""
    structure = _llada_structure(hf_config) if fmt.naming == "llada" else _hf_structure(fmt, hf_config)
    family = family or fmt.family
    if family not in FAMILY_TRAITS:
        raise ValueError(f"unknown model family {family!r}; supported: {sorted(FAMILY_TRAITS)}")
    traits = FAMILY_TRAITS[family]
    if mask_token_id is None:
        mask_token_id = hf_config.get("mask_token_id")
    if mask_token_id is None and fmt.name not in FAMILY_TRAITS:
        raise ValueError(f"a plain {fmt.name} checkpoint has no mask token: pass --mask-token-id (an unused row of its vocabulary)")
    if mask_token_id is None:
        mask_token_id = traits["mask_token_id"]
    if not 0 <= mask_token_id < structure["vocab_size"]:
        raise ValueError(
            f"mask token id {mask_token_id} is outside the vocabulary of {structure['vocab_size']} "
            "(config.json has no usable mask_token_id); pass --mask-token-id"
        )
    block = (hf_config.get(fmt.block_size_key) if fmt.block_size_key else None) or traits["block_size"]
    sub_block = traits["sub_block_size"] if block % traits["sub_block_size"] == 0 else block
    return DLLMConfig(family=family, **{**traits, **structure, "mask_token_id": mask_token_id,
                                         "block_size": block, "sub_block_size": sub_block})


def synthesized_hf_config(cfg: DLLMConfig, dtype: str) -> tuple[SourceFormat, dict]:
    """A plain transformers config.json for a checkpoint with no source (born in training):
    Qwen3 with q/k norms, Qwen2 with q/k/v biases, else Llama; dLLM fields are kept beside it."""
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("no plain transformers architecture has both q/k norms and q/k/v-only biases")
    fmt = FORMATS["qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"]
    config = dict(
        architectures=list(fmt.architectures), model_type=fmt.model_types[0], vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
        hidden_act="silu", rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings, attention_bias=False, torch_dtype=dtype,
        mask_token_id=cfg.mask_token_id, block_size=cfg.block_size, dllm_family=cfg.family,
    )
    return fmt, config
