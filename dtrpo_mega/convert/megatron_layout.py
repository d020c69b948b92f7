"""A DLLM's weights as megatron-core stores them in a dist checkpoint (torch_dist).

Keys are megatron-core's sharded keys, the same for the local and the Transformer Engine layer
specs (the local spec saves `input_layernorm` as `self_attention.linear_qkv.layer_norm_weight`
and `pre_mlp_layernorm` as `mlp.linear_fc1.layer_norm_weight`). Decoder layers are stacked on a
leading layer axis: `decoder.layers.<name>` has global shape [num_layers, ...], one chunk per
layer, which is what lets any pipeline layout load any layer. Each tensor's global layout is
independent of TP:

- `linear_qkv` (weight and bias): rows grouped per query group, `[q heads of the group; k; v]`;
- `linear_fc1`: `[gate; up]`; TP rank i holds `[gate_i; up_i]` (megatron-core's
  `apply_swiglu_sharded_factory`), saved as two chunks of the one key;
- word embeddings and output layer: the padded vocabulary's rows.

A mixture-of-experts model's layers differ (dense MLP first, then experts), and megatron-core then
keys every layer apart (`decoder.layers.<i>.<name>`, no layer axis); its routed experts are one
key per layer with a leading expert axis (`mlp.experts.experts.linear_fc1.weight` [experts, ...],
the same for its SequentialMLP and TE grouped GEMM), so any EP layout loads any expert. An `Item`
is what conversions stream: one tensor of one layer, and of one expert for routed experts.

`storage_chunks` cuts tensors as a TP layout saves them (column-parallel rows, row-parallel
columns, replicated norms whole), so an import at TP=N writes the chunks megatron-core would.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtrpo_mega.models.config import DLLMConfig

LAYER = "*"  # the layer wildcard of tensor names
EXPERT = "#"  # the expert wildcard of (Hugging Face) tensor names


def at_layer(name: str, layer: int | None, expert: int | None = None) -> str:
    name = name if layer is None else name.replace(f".{LAYER}.", f".{layer}.")
    return name if expert is None else name.replace(f".{EXPERT}.", f".{expert}.")


@dataclass(frozen=True)
class MegatronTensor:
    name: str  # e.g. "decoder.layers.*.mlp.linear_fc1.weight"
    shape: tuple[int, ...]  # one layer's (one expert's) shape for layer (expert) tensors
    tp_axis: int | None = None  # axis split across TP ranks; None: replicated
    tp_parts: int = 1  # pieces per TP rank along tp_axis (2 for fc1's [gate_i; up_i])
    stacked: bool = True  # a layer tensor of a homogeneous model: one key, a leading layer axis
    experts: int = 0  # a routed expert's tensor: a leading axis of this many experts, one key per layer

    @property
    def per_layer(self) -> bool:
        return f".{LAYER}." in self.name

    def key(self, layer: int | None = None) -> str:
        """The sharded key in the checkpoint."""
        if not self.per_layer or self.stacked:
            return self.name.replace(f".{LAYER}.", ".")
        return at_layer(self.name, layer)

    def global_shape(self, num_layers: int) -> tuple[int, ...]:
        if self.experts:
            return (self.experts, *self.shape)
        return (num_layers, *self.shape) if self.per_layer and self.stacked else self.shape


@dataclass(frozen=True)
class Item:
    """One layer's (one expert's) tensor, or a whole non-layer tensor: the unit conversions stream."""

    tensor: MegatronTensor
    layer: int | None = None
    expert: int | None = None

    @property
    def key(self) -> str:
        return self.tensor.key(self.layer)

    @property
    def lead(self) -> tuple[int, ...]:
        """Its offsets along the stored tensor's leading (layer or expert) axis."""
        if self.tensor.experts:
            return (self.expert,)
        return (self.layer,) if self.tensor.per_layer and self.tensor.stacked else ()


def layer_tensors(cfg: DLLMConfig, layer: int) -> list[MegatronTensor]:
    """The tensors of one decoder layer, in checkpoint order."""
    h, hd, ffn = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    stacked = cfg.moe is None
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd
    t = lambda name, shape, **kw: MegatronTensor(f"decoder.layers.*.{name}", shape, stacked=stacked, **kw)  # noqa: E731
    tensors = [
        t("self_attention.linear_qkv.layer_norm_weight", (h,)),
        t("self_attention.linear_qkv.weight", (qkv_rows, h), tp_axis=0),
    ]
    if cfg.qkv_bias:
        tensors.append(t("self_attention.linear_qkv.bias", (qkv_rows,), tp_axis=0))
    if cfg.qk_norm:
        tensors += [t("self_attention.q_layernorm.weight", (hd,)), t("self_attention.k_layernorm.weight", (hd,))]
    tensors += [
        t("self_attention.linear_proj.weight", (h, cfg.num_attention_heads * hd), tp_axis=1),
        t("mlp.linear_fc1.layer_norm_weight", (h,)),  # the pre-MLP norm, dense or MoE
    ]
    moe = cfg.moe
    if moe is None or not moe.is_moe_layer(layer):
        return tensors + [t("mlp.linear_fc1.weight", (2 * ffn, h), tp_axis=0, tp_parts=2),
                          t("mlp.linear_fc2.weight", (h, ffn), tp_axis=1)]
    tensors.append(t("mlp.router.weight", (moe.num_experts, h)))
    if moe.expert_bias:
        tensors.append(t("mlp.router.expert_bias", (moe.num_experts,)))
    if moe.shared_expert_ffn_hidden_size:
        shared = moe.shared_expert_ffn_hidden_size
        tensors += [t("mlp.shared_experts.linear_fc1.weight", (2 * shared, h), tp_axis=0, tp_parts=2),
                    t("mlp.shared_experts.linear_fc2.weight", (h, shared), tp_axis=1)]
    e, ffn = moe.num_experts, moe.ffn_hidden_size  # routed experts: stored whole (expert TP = 1)
    return tensors + [t("mlp.experts.experts.linear_fc1.weight", (2 * ffn, h), tp_axis=0, tp_parts=2, experts=e),
                      t("mlp.experts.experts.linear_fc2.weight", (h, ffn), experts=e)]


def _ends(cfg: DLLMConfig) -> tuple[MegatronTensor, list[MegatronTensor]]:
    if cfg.padded_vocab_size is None:
        raise ValueError("padded_vocab_size must be fixed before the checkpoint layout is known")
    vocab = (cfg.padded_vocab_size, cfg.hidden_size)
    head = [MegatronTensor("decoder.final_layernorm.weight", (cfg.hidden_size,))]
    if not cfg.tie_embeddings:
        head.append(MegatronTensor("output_layer.weight", vocab, tp_axis=0))
    return MegatronTensor("embedding.word_embeddings.weight", vocab, tp_axis=0), head


def megatron_tensors(cfg: DLLMConfig) -> list[MegatronTensor]:
    """Every distinct tensor of the model (each layer tensor once), in checkpoint order."""
    embedding, head = _ends(cfg)
    layers = {t.name: t for i in range(cfg.num_layers) for t in layer_tensors(cfg, i)}
    return [embedding, *layers.values(), *head]


@dataclass(frozen=True)
class Chunk:
    """One stored piece of an item: a TP slice of it (or all of it)."""

    item: Item
    offsets: tuple[int, ...]  # in the stored tensor (leading layer or expert axis first)
    sizes: tuple[int, ...]

    @property
    def tensor(self) -> MegatronTensor:
        return self.item.tensor

    @property
    def layer(self) -> int | None:
        return self.item.layer

    def local(self) -> tuple[int, int, int] | None:
        """(axis, start, length) of this chunk within the item's tensor; None when whole."""
        axis = self.tensor.tp_axis
        if axis is None:
            return None
        lead = len(self.item.lead)
        return axis, self.offsets[axis + lead], self.sizes[axis + lead]


def item_chunks(item: Item, tp: int) -> list[Chunk]:
    """The chunks a TP=tp layout saves of one item (routed experts: expert TP = 1)."""
    tensor = item.tensor
    lead_offsets, lead_sizes = item.lead, (1,) * len(item.lead)
    if tensor.tp_axis is None:
        return [Chunk(item, (*lead_offsets, *(0,) * len(tensor.shape)), (*lead_sizes, *tensor.shape))]
    parts = (1 if tensor.experts else tp) * tensor.tp_parts
    axis = tensor.tp_axis
    if tensor.shape[axis] % parts:
        raise ValueError(f"{tensor.name}: dimension {axis} of {tensor.shape} does not split into {parts} TP pieces")
    step = tensor.shape[axis] // parts
    chunks = []
    for i in range(parts):
        offsets = [0] * len(tensor.shape)
        sizes = list(tensor.shape)
        offsets[axis], sizes[axis] = i * step, step
        chunks.append(Chunk(item, (*lead_offsets, *offsets), (*lead_sizes, *sizes)))
    return chunks


def stream_groups(cfg: DLLMConfig) -> list[list[Item]]:
    """Items grouped as conversions stream them: the embedding; each layer's own tensors, then
    each of its routed experts; the final norm and the output layer."""
    embedding, head = _ends(cfg)
    groups = [[Item(embedding)]]
    for layer in range(cfg.num_layers):
        tensors = layer_tensors(cfg, layer)
        groups.append([Item(t, layer) for t in tensors if not t.experts])
        routed = [t for t in tensors if t.experts]
        groups += [[Item(t, layer, e) for t in routed] for e in range(routed[0].experts)] if routed else []
    return [*groups, [Item(t) for t in head]]


def storage_chunks(cfg: DLLMConfig, tp: int) -> list[Chunk]:
    """All chunks of the model at TP=tp, in streaming order."""
    return [c for group in stream_groups(cfg) for item in group for c in item_chunks(item, tp)]
