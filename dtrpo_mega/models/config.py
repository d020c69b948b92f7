"""Typed model configuration: one dataclass for every dLLM family, plus its megatron-core form.

A family (`models/families/`) is a set of defaults (layout, attention variant, mask token, shift,
block alignment), never a code fork.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment, DiffusionSpec


LATER_TRAITS = ("block_alignment",)  # family traits added after the first stored configs


class AttentionBackend(str, Enum):
    """Core attention kernels (models/attention.py)."""

    AUTO = "auto"
    LOCAL = "local"
    TE = "te"
    FLEX = "flex"


@dataclass
class DLLMConfig:
    family: str
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 layout
    qk_norm: bool = False  # Qwen3 layout: RMSNorm over each head of q and k
    tie_embeddings: bool = False
    mask_token_id: int = 0
    block_size: int = 32
    sub_block_size: int = 8
    logits_shift: bool = False  # token j is read from the logit at j - 1
    attention: MaskVariant = MaskVariant.BLOCK_DIFFUSION
    block_alignment: BlockAlignment = BlockAlignment.ABSOLUTE
    attention_backend: AttentionBackend = AttentionBackend.AUTO
    max_position_embeddings: int = 32768
    make_vocab_size_divisible_by: int = 128
    padded_vocab_size: int | None = None  # fixed once (import / first build) and kept in checkpoints
    init_method_std: float = 0.02
    extra: dict = field(default_factory=dict)  # family-specific fields carried for export

    def __post_init__(self):
        self.attention = MaskVariant(self.attention)
        self.block_alignment = BlockAlignment(self.block_alignment)
        self.attention_backend = AttentionBackend(self.attention_backend)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        problems = []
        if self.num_attention_heads % self.num_query_groups:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_query_groups "
                            f"({self.num_query_groups})")
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if not 0 <= self.mask_token_id < self.vocab_size:
            problems.append(f"mask_token_id ({self.mask_token_id}) is outside the vocabulary of {self.vocab_size}")
        if self.block_size < 1 or self.sub_block_size < 1 or self.block_size % self.sub_block_size:
            problems.append(f"block_size ({self.block_size}) must be a positive multiple of sub_block_size "
                            f"({self.sub_block_size})")
        if self.padded_vocab_size is not None and self.padded_vocab_size < self.vocab_size:
            problems.append(f"padded_vocab_size ({self.padded_vocab_size}) < vocab_size ({self.vocab_size})")
        if problems:
            raise ValueError(f"invalid {self.family} model config: " + "; ".join(problems))

    def padded_vocab(self, tp: int) -> int:
        """The stored padded size, or the vocabulary rounded up to divisible_by * TP."""
        if self.padded_vocab_size is not None:
            return self.padded_vocab_size
        multiple = self.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple

    def check_parallel(self, tp: int, pp: int) -> None:
        """Raise before any work if the layout cannot split this model."""
        problems = []
        if self.num_attention_heads % tp:
            problems.append(f"TP={tp} does not divide num_attention_heads={self.num_attention_heads}")
        if self.num_query_groups % tp:
            problems.append(f"TP={tp} does not divide num_query_groups (KV heads)={self.num_query_groups}")
        if self.ffn_hidden_size % tp:
            problems.append(f"TP={tp} does not divide ffn_hidden_size={self.ffn_hidden_size}")
        if self.padded_vocab(tp) % tp:
            problems.append(f"TP={tp} does not divide the padded vocabulary {self.padded_vocab(tp)}")
        if self.num_layers % pp:
            problems.append(f"PP={pp} does not divide num_layers={self.num_layers}")
        if problems:
            raise ValueError("parallel layout does not fit the model: " + "; ".join(problems))

    @property
    def diffusion(self) -> DiffusionSpec:
        return DiffusionSpec(self.block_size, self.sub_block_size, self.mask_token_id, self.logits_shift,
                             self.attention, self.block_alignment)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("attention", "attention_backend", "block_alignment"):
            d[name] = getattr(self, name).value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DLLMConfig":
        """A stored config; a family trait it predates (e.g. `block_alignment`) takes the family's value."""
        from dtrpo_mega.models.families import get_family

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}; known: {sorted(known)}")
        traits = get_family(d["family"]).traits
        return cls(**{**{k: traits[k] for k in LATER_TRAITS if k in traits and k not in d}, **d})

    def transformer_config(self, tp: int, pp: int, params_dtype: torch.dtype, use_cpu_initialization: bool,
                           cp: int = 1):
        """The megatron-core TransformerConfig of this model at a parallel layout (CP: context-parallel size)."""
        from megatron.core.transformer.transformer_config import TransformerConfig

        self.check_parallel(tp, pp)
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.head_dim,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_eps,
            gated_linear_unit=True,
            activation_func=F.silu,
            add_bias_linear=False,
            add_qkv_bias=self.qkv_bias,
            qk_layernorm=self.qk_norm,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            bias_activation_fusion=False,
            bias_dropout_fusion=False,
            masked_softmax_fusion=False,
            apply_rope_fusion=False,
            persist_layer_norm=False,
            gradient_accumulation_fusion=False,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            context_parallel_size=cp,
            params_dtype=params_dtype,
            pipeline_dtype=params_dtype,
            bf16=params_dtype == torch.bfloat16,
            use_cpu_initialization=use_cpu_initialization,
            variable_seq_lengths=True,  # micro-batches differ in length; PP stages exchange shapes
            moe_token_dispatcher_type="alltoall",  # unused (dense model); megatron-core's check for the line above
        )
