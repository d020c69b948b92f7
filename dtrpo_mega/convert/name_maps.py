"""Name maps: megatron tensor name -> its mapping (how it is split into or joined from HF tensors).

The names come from the source format (`SourceFormat.weight_names`, declared by each family in
`models/families/`); the kind of each mapping from the tensor's role.
"""

from __future__ import annotations

from dtrpo_mega.convert.mapping import QKV, Direct, FusedQKV, GatedMLP, Mapping, VocabRows
from dtrpo_mega.convert.megatron_layout import megatron_tensors
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families.spec import SourceFormat

KINDS: dict[str, type[Mapping]] = {
    "embedding.word_embeddings.weight": VocabRows, "output_layer.weight": VocabRows,
    "decoder.layers.*.self_attention.linear_qkv.weight": QKV, "decoder.layers.*.self_attention.linear_qkv.bias": QKV,
    "decoder.layers.*.mlp.linear_fc1.weight": GatedMLP,
    "decoder.layers.*.mlp.shared_experts.linear_fc1.weight": GatedMLP,
    "decoder.layers.*.mlp.experts.experts.linear_fc1.weight": GatedMLP,
}


def name_map(fmt: SourceFormat, cfg: DLLMConfig) -> dict[str, Mapping]:
    """Megatron tensor name -> its mapping, for every tensor of this model."""
    names = fmt.weight_names
    missing = [t.name for t in megatron_tensors(cfg) if t.name not in names]
    if missing:
        raise ValueError(f"the {fmt.name} weight naming has no tensors for {missing} (model config: "
                         f"qk_norm={cfg.qk_norm}, experts: {cfg.moe is not None})")
    return {t.name: _kind(t.name, names[t.name])(t.name, names[t.name]) for t in megatron_tensors(cfg)}


def _kind(name: str, hf_names: tuple[str, ...]) -> type[Mapping]:
    kind = KINDS.get(name, Direct)
    return FusedQKV if kind is QKV and len(hf_names) == 1 else kind
