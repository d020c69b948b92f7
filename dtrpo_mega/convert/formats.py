"""Source formats: the Hugging Face architectures we read, how `--family auto` picks one, and how
a `config.json` becomes a `DLLMConfig` (and, for checkpoints born in training, the reverse).

Each dLLM family declares its own architectures, config reading and weight names
(`models/families/`). Plain Llama / Qwen2 / Qwen3 become the dLLM family of the same layout unless
told otherwise: qwen2 -> fast_dllm_v2 (Fast-dLLM v2 starts from Qwen2.5), qwen3 -> sdar (SDAR
starts from Qwen3), llama -> llada (LLaDA is LLaMA-shaped). The original architecture is kept for
export. They have no mask token, so `--mask-token-id` names one (Fast-dLLM v2 and SDAR use the
first unused embedding row of their base vocabulary).
"""

from __future__ import annotations

from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families import FAMILIES, get_family, source_formats
from dtrpo_mega.models.families.spec import TRANSFORMERS_NAMES, SourceFormat, reject_features

PLAIN_FORMATS = (
    SourceFormat("llama", ("LlamaForCausalLM",), ("llama",), "llada", TRANSFORMERS_NAMES),
    SourceFormat("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), "fast_dllm_v2", TRANSFORMERS_NAMES, qkv_bias=True),
    SourceFormat("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), "sdar", TRANSFORMERS_NAMES, qk_norm=True),
)
FORMATS: dict[str, SourceFormat] = {f.name: f for f in (*source_formats(), *PLAIN_FORMATS)}


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
    reject_features(problems, f"config.json ({fmt.name})")
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


def dllm_config(fmt: SourceFormat, hf_config: dict, family: str | None = None, mask_token_id: int | None = None) -> DLLMConfig:
    """The DLLMConfig of a source config.json: structure from the file, dLLM traits from the family."""
    structure = fmt.read_structure(hf_config) if fmt.read_structure else _hf_structure(fmt, hf_config)
    family = family or fmt.family
    traits = get_family(family).traits
    if mask_token_id is None:
        mask_token_id = hf_config.get("mask_token_id")
    if mask_token_id is None and fmt.name not in FAMILIES:
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


def source_config(fmt: SourceFormat, cfg: DLLMConfig, dtype: str) -> dict:
    """The config.json of `cfg` in a source format (the inverse of `dllm_config`)."""
    if fmt.write_structure is not None:
        structure = fmt.write_structure(cfg)
    else:
        structure = dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups,
            head_dim=cfg.head_dim, hidden_act="silu", rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
            tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_position_embeddings, attention_bias=False,
        )
    block = {fmt.block_size_key: cfg.block_size} if fmt.block_size_key else {}
    return dict(architectures=list(fmt.architectures), model_type=fmt.model_types[0], **structure, **block, torch_dtype=dtype,
                mask_token_id=cfg.mask_token_id)


def synthesized_hf_config(cfg: DLLMConfig, dtype: str) -> tuple[SourceFormat, dict]:
    """A plain transformers config.json for a checkpoint with no source (born in training):
    Qwen3 with q/k norms, Qwen2 with q/k/v biases, else Llama; dLLM fields are kept beside it."""
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("no plain transformers architecture has both q/k norms and q/k/v-only biases")
    fmt = FORMATS["qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"]
    return fmt, {**source_config(fmt, cfg, dtype), "block_size": cfg.block_size, "dllm_family": cfg.family}
