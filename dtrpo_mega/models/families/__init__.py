"""The model families, one module each, and the registry the rest of the code asks.

Adding a family means adding one module that builds a `Family` (`spec.py`) and listing it here.
Code outside `models/` uses only this module's functions, never a family module's internals.
"""

from __future__ import annotations

from dtrpo_mega.models.config import DLLMConfig, merge_moe
from dtrpo_mega.models.families import dream, fast_dllm_v2, llada, llada2, sdar, sdar_moe
from dtrpo_mega.models.families.spec import ChatTemplate, Family, SourceFormat

FAMILIES: dict[str, Family] = {f.name: f for f in (fast_dllm_v2.FAMILY, sdar.FAMILY, llada.FAMILY, dream.FAMILY,
                                                    llada2.FAMILY, sdar_moe.FAMILY)}

# A debug model for every family: runs anywhere, and its vocabulary is not a multiple of 128 so
# that vocabulary padding is always exercised; its mask token is its last vocabulary row.
TINY = dict(vocab_size=250, hidden_size=64, ffn_hidden_size=128, num_layers=4, num_attention_heads=4,
            num_query_groups=2, max_position_embeddings=512)


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; supported: {family_names()}")
    return FAMILIES[name]


def chat_template(family: str) -> ChatTemplate:
    return get_family(family).chat


def source_formats() -> list[SourceFormat]:
    """Every family's own Hugging Face architectures."""
    return [fmt for family in FAMILIES.values() for fmt in family.formats]


def model_config(family: str, size: str = "tiny", **overrides) -> DLLMConfig:
    """A family's config at a named size; keyword overrides win."""
    spec = get_family(family)
    sizes = {"tiny": {**TINY, **spec.tiny_blocks}, **{name: s.fields for name, s in spec.sizes.items()}}
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for family {family!r}; available: {sorted(sizes)}")
    fields = {**spec.traits, **sizes[size]}
    fields.update(merge_moe(fields.get("moe"), overrides))
    if size == "tiny" and "mask_token_id" not in overrides:
        fields["mask_token_id"] = fields["vocab_size"] - 1
    return DLLMConfig(family=family, **fields)
