"""Source formats: the Hugging Face architectures we read, how `--family auto` picks one, and how
a `config.json` becomes a `DLLMConfig` (and, for checkpoints born in training, the reverse).

Each dLLM family declares its own architectures, config reading and weight names
(`models/families/`). Plain Llama / Qwen2 / Qwen3 become the dLLM family of the same layout unless
told otherwise: qwen2 -> fast_dllm_v2 (Fast-dLLM v2 starts from Qwen2.5), qwen3 -> sdar (SDAR
starts from Qwen3), qwen3_moe -> sdar_moe (SDAR-30B-A3B starts from Qwen3-30B-A3B), llama -> llada
(LLaDA is LLaMA-shaped). The original architecture is kept for
export. They have no mask token, so `--mask-token-id` names one (Fast-dLLM v2 and SDAR use the
first unused embedding row of their base vocabulary).

A config.json is checked before it is read: a missing required field, a size or count that is not
a positive integer (a string, a list, a bool, zero, negative), and the like are a ValueError
naming the file and the field, never a KeyError / TypeError / ZeroDivisionError from deep inside.
"""

from __future__ import annotations

from dtrpo_mega.models.config import DLLMConfig, MoEConfig
from dtrpo_mega.models.families import FAMILIES, get_family, source_formats
from dtrpo_mega.models.families.spec import TRANSFORMERS_MOE_NAMES, TRANSFORMERS_NAMES, SourceFormat, reject_features

PLAIN_FORMATS = (
    SourceFormat("llama", ("LlamaForCausalLM",), ("llama",), "llada", TRANSFORMERS_NAMES),
    SourceFormat("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), "fast_dllm_v2", TRANSFORMERS_NAMES, qkv_bias=True),
    SourceFormat("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), "sdar", TRANSFORMERS_NAMES, qk_norm=True),
    SourceFormat("qwen3_moe", ("Qwen3MoeForCausalLM",), ("qwen3_moe",), "sdar_moe", TRANSFORMERS_MOE_NAMES,
                 qk_norm=True),
)
FORMATS: dict[str, SourceFormat] = {f.name: f for f in (*source_formats(), *PLAIN_FORMATS)}


# config.json fields holding a size or a count (transformers names, then LLaDA's OLMo-style ones):
# a positive integer when present; null stands for an absent optional field.
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "d_model", "n_heads", "n_kv_heads",
               "n_layers", "mlp_hidden_size", "embedding_size", "max_sequence_length", "num_experts",
               "num_experts_per_tok", "num_local_experts", "moe_intermediate_size")
NUMBER_FIELDS = ("rope_theta", "rms_norm_eps", "mlp_ratio")  # positive numbers
STRUCTURE_SIZES = ("vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads",
                   "num_query_groups", "head_dim", "max_position_embeddings")  # DLLMConfig fields read from those


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_error(where, name: str, value, want: str) -> ValueError:
    return ValueError(f"{where}: field {name!r} must be {want}, got {value!r:.80}")


class _Fields(dict):
    """A config.json whose missing (or null) required field is a ValueError naming the file and the
    field; `get` stays as it is for the optional ones."""

    def __init__(self, config: dict, where, fmt: str):
        super().__init__(config)
        self.where, self.fmt = where, fmt

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value is None:
            raise ValueError(f"{self.where}: required field {key!r} is null (a {self.fmt} config.json)")
        return value

    def __missing__(self, key):
        raise ValueError(f"{self.where}: missing required field {key!r} (a {self.fmt} config.json)")


def check_fields(config: dict, where="config.json", fmt: SourceFormat | None = None) -> None:
    """Raise, naming the file and the field, on a config.json value of the wrong type or range."""
    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        raise _field_error(where, "architectures", architectures, "a list of names")
    for name in SIZE_FIELDS:
        value = config.get(name)
        if value is not None and not (_is_int(value) and value > 0):
            raise _field_error(where, name, value, "a positive integer")
    for name in NUMBER_FIELDS:
        value = config.get(name)
        if value is not None and not (_is_number(value) and value > 0):
            raise _field_error(where, name, value, "a positive number")
    for name in ("rope_scaling", "rope_parameters"):
        value = config.get(name)
        if value is not None and not isinstance(value, dict):
            raise _field_error(where, name, value, "an object or null")
        theta = (value or {}).get("rope_theta")
        if theta is not None and not (_is_number(theta) and theta > 0):
            raise _field_error(where, f"{name}.rope_theta", theta, "a positive number")
    mask = config.get("mask_token_id")
    if mask is not None and not (_is_int(mask) and mask >= 0):
        raise _field_error(where, "mask_token_id", mask, "a non-negative integer")
    block = config.get(fmt.block_size_key) if fmt is not None and fmt.block_size_key else None
    if block is not None and not (_is_int(block) and block > 0):
        raise _field_error(where, fmt.block_size_key, block, "a positive integer")


def supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.architectures)})" for f in FORMATS.values())


def detect(config: dict, where="config.json") -> tuple[SourceFormat, str]:
    """The format of a config.json, and why (from `architectures`, else `model_type`)."""
    check_fields(config, where)
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


def _hf_structure(fmt: SourceFormat, c: dict, where="config.json") -> dict:
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
    reject_features(problems, f"{where} ({fmt.name})")
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
        **({"moe": _hf_experts(c, where)} if c.get("num_experts") or c.get("num_local_experts") else {}),
    )


def _hf_experts(c: dict, where) -> MoEConfig:
    """Qwen3-MoE's experts (transformers' `Qwen3MoeSparseMoeBlock`): softmax over every expert in
    float32, the top `num_experts_per_tok`, renormalized when `norm_topk_prob` (transformers'
    default: false); every layer sparse."""
    problems = []
    if c.get("decoder_sparse_step", 1) != 1 or c.get("mlp_only_layers"):
        problems.append(f"decoder_sparse_step={c.get('decoder_sparse_step')!r}, mlp_only_layers="
                        f"{c.get('mlp_only_layers')!r} (dense layers among the MoE ones)")
    if c.get("shared_expert_intermediate_size"):
        problems.append("shared_expert_intermediate_size (a gated shared expert, Qwen2-MoE's)")
    reject_features(problems, f"{where} (qwen3_moe)")
    # the hub's Qwen3-MoE configs say num_experts; transformers 5 writes num_local_experts
    return MoEConfig(num_experts=c.get("num_experts") or c["num_local_experts"],
                     ffn_hidden_size=c["moe_intermediate_size"], topk=c["num_experts_per_tok"],
                     normalize_topk=bool(c.get("norm_topk_prob", False)),
                     aux_loss_coeff=float(c.get("router_aux_loss_coef", 0.0)))


def _hf_experts_fields(moe: MoEConfig) -> dict:
    """The inverse of `_hf_experts`."""
    return dict(num_experts=moe.num_experts, moe_intermediate_size=moe.ffn_hidden_size,
                num_experts_per_tok=moe.topk, norm_topk_prob=moe.normalize_topk, decoder_sparse_step=1,
                mlp_only_layers=[], router_aux_loss_coef=moe.aux_loss_coeff)


def _read_structure(fmt: SourceFormat, hf_config: dict, where) -> dict:
    """The format's structure fields, every problem a ValueError naming the file."""
    fields = _Fields(hf_config, where, fmt.name)
    try:
        structure = fmt.read_structure(fields) if fmt.read_structure else _hf_structure(fmt, fields, where)
    except ValueError as err:
        if str(err).startswith(str(where)):
            raise
        raise ValueError(f"{where}: {err}") from None
    except (TypeError, ArithmeticError, AttributeError, KeyError) as err:
        raise ValueError(f"{where}: cannot read the {fmt.name} model structure ({type(err).__name__}: {err})") from None
    for name in STRUCTURE_SIZES:
        value = structure.get(name)
        if value is not None and not (_is_int(value) and value > 0):
            raise ValueError(f"{where}: its {fmt.name} fields give {name}={value!r}, which must be a positive integer")
    return structure


def dllm_config(fmt: SourceFormat, hf_config: dict, family: str | None = None, mask_token_id: int | None = None,
                where="config.json") -> DLLMConfig:
    """The DLLMConfig of a source config.json: structure from the file, dLLM traits from the family.

    `where` (the file's path) starts every error message."""
    check_fields(hf_config, where, fmt)
    structure = _read_structure(fmt, hf_config, where)
    family = family or fmt.family
    traits = get_family(family).traits
    if mask_token_id is None:
        mask_token_id = hf_config.get("mask_token_id")
    if mask_token_id is None and fmt.name not in FAMILIES:
        raise ValueError(f"{where}: a plain {fmt.name} checkpoint has no mask token: pass --mask-token-id (an unused "
                         "row of its vocabulary)")
    if mask_token_id is None:
        mask_token_id = traits["mask_token_id"]
    if not 0 <= mask_token_id < structure["vocab_size"]:
        raise ValueError(
            f"{where}: mask token id {mask_token_id} is outside the vocabulary of {structure['vocab_size']} "
            "(config.json has no usable mask_token_id); pass --mask-token-id"
        )
    block = (hf_config.get(fmt.block_size_key) if fmt.block_size_key else None) or traits["block_size"]
    sub_block = traits["sub_block_size"] if block % traits["sub_block_size"] == 0 else block
    try:
        return DLLMConfig(family=family, **{**traits, **structure, "mask_token_id": mask_token_id,
                                             "block_size": block, "sub_block_size": sub_block})
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def source_config(fmt: SourceFormat, cfg: DLLMConfig, dtype: str) -> dict:
    """The config.json of `cfg` in a source format (the inverse of `dllm_config`)."""
    if fmt.write_structure is not None:
        structure = fmt.write_structure(cfg)
    else:
        structure = dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim, hidden_act="silu",
            rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
            max_position_embeddings=cfg.max_position_embeddings, attention_bias=False,
            **(_hf_experts_fields(cfg.moe) if cfg.moe is not None else {}),
        )
    block = {fmt.block_size_key: cfg.block_size} if fmt.block_size_key else {}
    return dict(architectures=list(fmt.architectures), model_type=fmt.model_types[0], **structure, **block,
                torch_dtype=dtype, mask_token_id=cfg.mask_token_id)


def synthesized_hf_config(cfg: DLLMConfig, dtype: str) -> tuple[SourceFormat, dict]:
    """A plain transformers config.json for a checkpoint with no source (born in training):
    Qwen3 with q/k norms, Qwen2 with q/k/v biases, else Llama, Qwen3-MoE for sdar_moe, the family's
    own format for other mixtures of experts; dLLM fields are kept beside it."""
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("no plain transformers architecture has both q/k norms and q/k/v-only biases")
    if cfg.moe is not None:
        fmt = FORMATS["qwen3_moe"] if cfg.family == "sdar_moe" else get_family(cfg.family).formats[0]
    else:
        fmt = FORMATS["qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"]
    return fmt, {**source_config(fmt, cfg, dtype), "block_size": cfg.block_size, "dllm_family": cfg.family}
