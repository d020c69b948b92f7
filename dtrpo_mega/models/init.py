"""Random initialization that is the same at every parallel layout.

megatron-core draws a rank's weights from that rank's generator (seeded per pipeline stage), so
the same seed gives different models at different TP/PP, and a run resumed at another layout
would build another reference. Here every matrix of layer `l` is drawn whole, on CPU, from a
generator seeded by (seed, its global name, l) alone, and each rank keeps its shard: the weights
depend on the seed only. Distributions follow megatron-core: normal(0, std) for every matrix,
std / sqrt(2 * num_layers) for the output projections of attention and MLP; vocabulary padding
rows are zero; norms (ones) and biases (zeros) keep megatron's values, already layout-free.
"""

from __future__ import annotations

import hashlib
import math

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

from dtrpo_mega.checkpoint.model import sharded_weights
from dtrpo_mega.models.config import DLLMConfig

SCALED = ("linear_proj.weight", "linear_fc2.weight")  # megatron's output_layer_init_method
VOCAB = ("embedding.word_embeddings.weight", "output_layer.weight")


def _draw(seed: int, cfg: DLLMConfig, key: str, layer: tuple[int, ...], shape: list[int]) -> torch.Tensor:
    """The unsharded matrix `key` of one layer (or of the model: `layer` empty)."""
    std = cfg.init_method_std / math.sqrt(2 * cfg.num_layers) if key.endswith(SCALED) else cfg.init_method_std
    rows = cfg.vocab_size if key in VOCAB else shape[0]
    name = "vocab" if key in VOCAB else key  # a tied output layer is the embedding
    digest = hashlib.sha256(f"{seed}:{name}:{layer}".encode()).digest()
    drawn = torch.randn([rows, *shape[1:]],
                        generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))) * std
    return torch.cat([drawn, drawn.new_zeros(shape[0] - rows, *shape[1:])])  # vocabulary padding rows: zero


@torch.no_grad()
def init_weights(model, cfg: DLLMConfig, seed: int) -> None:
    """Overwrite this rank's matrices with their shards of the layout-free draw."""
    drawn: dict = {}
    for value in sharded_weights(model).values():
        for piece in value.build() if isinstance(value, ShardedTensorFactory) else [value]:
            if piece.data.dim() < 2:
                continue
            lead = piece.prepend_axis_num
            key = (piece.key, tuple(piece.global_offset[:lead]))
            if key not in drawn:
                drawn = {key: _draw(seed, cfg, *key, list(piece.global_shape[lead:]))}  # one matrix at a time
            shard = drawn[key][tuple(slice(o, o + n) for o, n in zip(piece.global_offset[lead:], piece.local_shape))]
            piece.data.copy_(shard.to(piece.data.dtype))
    if model.share_embeddings_and_output_weights and model.post_process and not model.pre_process:
        _init_tied_copy(model, cfg, seed)


def _init_tied_copy(model, cfg: DLLMConfig, seed: int) -> None:
    """The last stage's copy of a tied embedding (PP > 1), which its sharded state does not list."""
    weight = model.shared_embedding_or_output_weight()
    rows, tp = weight.shape[0], model.pg_collection.tp
    whole = _draw(seed, cfg, VOCAB[0], (), [rows * tp.size(), weight.shape[1]])
    start = tp.rank() * rows
    weight.data.copy_(whole[start : start + rows].to(weight.dtype))
