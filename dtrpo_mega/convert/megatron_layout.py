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

`storage_chunks` cuts tensors as a TP layout saves them (column-parallel rows, row-parallel
columns, replicated norms whole), so an import at TP=N writes the chunks megatron-core would.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtrpo_mega.models.config import DLLMConfig

LAYER = "*"  # the layer wildcard of tensor names


@dataclass(frozen=True)
class MegatronTensor:
    name: str  # e.g. "decoder.layers.*.mlp.linear_fc1.weight"
    shape: tuple[int, ...]  # one layer's shape for layer tensors
    tp_axis: int | None = None  # axis split across TP ranks; None: replicated
    tp_parts: int = 1  # pieces per TP rank along tp_axis (2 for fc1's [gate_i; up_i])

    @property
    def per_layer(self) -> bool:
        return f".{LAYER}." in self.name

    @property
    def key(self) -> str:
        """The sharded key in the checkpoint."""
        return self.name.replace(f".{LAYER}.", ".")

    def global_shape(self, num_layers: int) -> tuple[int, ...]:
        return (num_layers, *self.shape) if self.per_layer else self.shape


def megatron_tensors(cfg: DLLMConfig) -> list[MegatronTensor]:
    """Every tensor of the model, in checkpoint order (embedding, one layer's tensors, head)."""
    if cfg.padded_vocab_size is None:
        raise ValueError("padded_vocab_size must be fixed before the checkpoint layout is known")
    h, hd, ffn = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd
    vocab = (cfg.padded_vocab_size, h)
    layer = [
        MegatronTensor("decoder.layers.*.self_attention.linear_qkv.layer_norm_weight", (h,)),
        MegatronTensor("decoder.layers.*.self_attention.linear_qkv.weight", (qkv_rows, h), tp_axis=0),
    ]
    if cfg.qkv_bias:
        layer.append(MegatronTensor("decoder.layers.*.self_attention.linear_qkv.bias", (qkv_rows,), tp_axis=0))
    if cfg.qk_norm:
        layer += [
            MegatronTensor("decoder.layers.*.self_attention.q_layernorm.weight", (hd,)),
            MegatronTensor("decoder.layers.*.self_attention.k_layernorm.weight", (hd,)),
        ]
    layer += [
        MegatronTensor("decoder.layers.*.self_attention.linear_proj.weight", (h, cfg.num_attention_heads * hd),
                       tp_axis=1),
        MegatronTensor("decoder.layers.*.mlp.linear_fc1.layer_norm_weight", (h,)),
        MegatronTensor("decoder.layers.*.mlp.linear_fc1.weight", (2 * ffn, h), tp_axis=0, tp_parts=2),
        MegatronTensor("decoder.layers.*.mlp.linear_fc2.weight", (h, ffn), tp_axis=1),
    ]
    head = [MegatronTensor("decoder.final_layernorm.weight", (h,))]
    if not cfg.tie_embeddings:
        head.append(MegatronTensor("output_layer.weight", vocab, tp_axis=0))
    return [MegatronTensor("embedding.word_embeddings.weight", vocab, tp_axis=0), *layer, *head]


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: a layer (for layer tensors) and a TP slice."""

    tensor: MegatronTensor
    layer: int | None
    offsets: tuple[int, ...]  # in the global tensor (layer axis first for layer tensors)
    sizes: tuple[int, ...]

    def local(self) -> tuple[int, int, int] | None:
        """(axis, start, length) of this chunk within one layer's tensor; None when whole."""
        axis = self.tensor.tp_axis
        if axis is None:
            return None
        lead = 1 if self.tensor.per_layer else 0
        return axis, self.offsets[axis + lead], self.sizes[axis + lead]


def tensor_chunks(tensor: MegatronTensor, layer: int | None, tp: int) -> list[Chunk]:
    """The chunks a TP=tp layout saves of one tensor (of one layer for layer tensors)."""
    lead_offsets, lead_sizes = ((layer,), (1,)) if tensor.per_layer else ((), ())
    if tensor.tp_axis is None:
        return [Chunk(tensor, layer, (*lead_offsets, *(0,) * len(tensor.shape)), (*lead_sizes, *tensor.shape))]
    parts = tp * tensor.tp_parts
    axis = tensor.tp_axis
    if tensor.shape[axis] % parts:
        raise ValueError(f"{tensor.name}: dimension {axis} of {tensor.shape} does not split into {parts} TP pieces")
    step = tensor.shape[axis] // parts
    chunks = []
    for i in range(parts):
        offsets = [0] * len(tensor.shape)
        sizes = list(tensor.shape)
        offsets[axis], sizes[axis] = i * step, step
        chunks.append(Chunk(tensor, layer, (*lead_offsets, *offsets), (*lead_sizes, *sizes)))
    return chunks


def stream_groups(cfg: DLLMConfig) -> list[list[tuple[MegatronTensor, int | None]]]:
    """(tensor, layer) pairs grouped as conversions stream them: the embedding, each layer, then
    the final norm and the output layer."""
    tensors = megatron_tensors(cfg)
    layer = [t for t in tensors if t.per_layer]
    head = [(t, None) for t in tensors[1:] if not t.per_layer]
    return [[(tensors[0], None)], *[[(t, i) for t in layer] for i in range(cfg.num_layers)], head]


def storage_chunks(cfg: DLLMConfig, tp: int) -> list[Chunk]:
    """All chunks of the model at TP=tp, in streaming order."""
    return [c for group in stream_groups(cfg) for tensor, layer in group for c in tensor_chunks(tensor, layer, tp)]
