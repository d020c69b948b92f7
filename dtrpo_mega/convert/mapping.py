"""The one HF <-> megatron mapping mechanism: a name map with layer wildcards, and per tensor a
mapping kind with its inverse.

- `Direct`: same tensor under another name (norms, o_proj, down_proj, q/k norms).
- `VocabRows`: embedding / output layer; zero rows pad the vocabulary to `padded_vocab_size` on
  import and are cut off on export.
- `QKV`: separate q, k, v (weights or biases) <-> megatron's `linear_qkv`, whose rows are grouped
  per query group as `[q heads of the group; k; v]`, so that a TP rank's contiguous rows hold
  whole groups (this is the GQA interleave; a plain concatenation would be wrong for TP and GQA).
- `FusedQKV`: one `[all q; all k; all v]` tensor (Ling 2.0's `query_key_value`) <-> the same.
- `GatedMLP`: gate and up <-> `linear_fc1` = `[gate; up]` (its TP split into `[gate_i; up_i]` is
  the checkpoint's chunking, see `megatron_layout`).

Every kind is a pure function of tensors and the config, so `to_hf(to_megatron(x)) == x` bit for
bit, and applying `to_hf` to a meta tensor gives the HF shapes a config implies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dtrpo_mega.convert.megatron_layout import Item, at_layer
from dtrpo_mega.models.config import DLLMConfig


@dataclass(frozen=True)
class Mapping:
    """One megatron tensor and the HF tensor(s) it is made of; the identity unless overridden."""

    megatron: str
    hf: tuple[str, ...]

    def hf_names(self, item: Item) -> list[str]:
        return [at_layer(n, item.layer, item.expert) for n in self.hf]

    def to_megatron(self, tensors: list[Tensor], cfg: DLLMConfig) -> Tensor:
        return tensors[0]

    def to_hf(self, tensor: Tensor, cfg: DLLMConfig) -> list[Tensor]:
        return [tensor]


class Direct(Mapping):
    """The same tensor under another name."""


class VocabRows(Mapping):
    def to_megatron(self, tensors: list[Tensor], cfg: DLLMConfig) -> Tensor:
        rows = tensors[0]
        pad = cfg.padded_vocab_size - rows.shape[0]
        return rows if pad == 0 else torch.cat([rows, rows.new_zeros(pad, *rows.shape[1:])])

    def to_hf(self, tensor: Tensor, cfg: DLLMConfig) -> list[Tensor]:
        return [tensor[: cfg.vocab_size]]


class QKV(Mapping):
    def to_megatron(self, tensors: list[Tensor], cfg: DLLMConfig) -> Tensor:
        groups, hd = cfg.num_query_groups, cfg.head_dim
        q, k, v = (t.reshape(groups, -1, hd, *t.shape[1:]) for t in tensors)
        return torch.cat([q, k, v], dim=1).reshape(-1, *tensors[0].shape[1:])

    def to_hf(self, tensor: Tensor, cfg: DLLMConfig) -> list[Tensor]:
        rest = tensor.shape[1:]
        grouped = tensor.reshape(cfg.num_query_groups, -1, cfg.head_dim, *rest)
        heads_per_group = cfg.num_attention_heads // cfg.num_query_groups
        return [part.reshape(-1, *rest) for part in grouped.split([heads_per_group, 1, 1], dim=1)]


class FusedQKV(QKV):
    def to_megatron(self, tensors: list[Tensor], cfg: DLLMConfig) -> Tensor:
        return super().to_megatron(list(tensors[0].split(_qkv_rows(cfg))), cfg)

    def to_hf(self, tensor: Tensor, cfg: DLLMConfig) -> list[Tensor]:
        return [torch.cat(super().to_hf(tensor, cfg))]


def _qkv_rows(cfg: DLLMConfig) -> list[int]:
    hd = cfg.head_dim
    return [cfg.num_attention_heads * hd, cfg.num_query_groups * hd, cfg.num_query_groups * hd]


class GatedMLP(Mapping):
    def to_megatron(self, tensors: list[Tensor], cfg: DLLMConfig) -> Tensor:
        gate, up = tensors
        return torch.cat([gate, up])

    def to_hf(self, tensor: Tensor, cfg: DLLMConfig) -> list[Tensor]:
        return list(tensor.chunk(2))


def hf_shapes(mapping: Mapping, megatron_shape: tuple[int, ...], cfg: DLLMConfig) -> list[tuple[int, ...]]:
    """The HF tensor shapes that correspond to one megatron tensor of this shape."""
    return [tuple(t.shape) for t in mapping.to_hf(torch.empty(megatron_shape, device="meta"), cfg)]
