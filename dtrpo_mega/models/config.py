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
class MoEConfig:
    """A mixture-of-experts MLP, in megatron-core's terms (TransformerConfig's `moe_*` fields).

    Routing follows the families' own modeling code: scores = score_function(router logits) in
    float32; the top-k experts by score (plus `expert_bias`, which only selects) within the best
    `group_topk` of `num_groups` expert groups; their scores as weights, divided by their sum when
    `normalize_topk` and multiplied by `routed_scaling_factor`. Dropless: every token reaches its
    experts (as in the Hugging Face models).
    """

    num_experts: int
    ffn_hidden_size: int  # one routed expert's intermediate size
    topk: int
    shared_expert_ffn_hidden_size: int = 0  # all shared experts together; 0: none
    first_dense_layers: int = 0  # leading layers with a dense MLP of the model's ffn_hidden_size
    score_function: str = "softmax"  # "softmax" | "sigmoid"
    normalize_topk: bool = True
    expert_bias: bool = False  # aux-loss-free balancing: a per-expert bias added for selection only
    bias_update_rate: float = 1e-3
    num_groups: int | None = None  # group-limited routing
    group_topk: int | None = None
    routed_scaling_factor: float | None = None
    aux_loss_coeff: float = 0.0  # megatron's global-batch load-balancing loss, added to the loss

    def __post_init__(self):
        problems = []
        if self.score_function not in ("softmax", "sigmoid"):
            problems.append(f"score_function={self.score_function!r} (softmax or sigmoid)")
        if not 1 <= self.topk <= self.num_experts:
            problems.append(f"topk={self.topk} must be in [1, num_experts={self.num_experts}]")
        if (self.num_groups is None) != (self.group_topk is None):
            problems.append("num_groups and group_topk are set together")
        elif self.num_groups and (self.num_experts % self.num_groups or self.group_topk > self.num_groups):
            problems.append(f"num_groups={self.num_groups} must divide num_experts={self.num_experts} and be "
                            f">= group_topk={self.group_topk}")
        if self.score_function == "sigmoid" and not self.normalize_topk and self.topk > 1:
            problems.append("sigmoid routing always normalizes its top-k weights in megatron-core (normalize_topk)")
        if problems:
            raise ValueError("invalid MoE config: " + "; ".join(problems))

    def is_moe_layer(self, layer: int) -> bool:
        """Whether global layer `layer` (0-based) has experts."""
        return layer >= self.first_dense_layers


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
    rotary_fraction: float = 1.0  # leading share of each head's channels that rope rotates (Ling 2.0: 0.5)
    moe: MoEConfig | None = None  # mixture of experts; None: every layer's MLP is dense
    extra: dict = field(default_factory=dict)  # family-specific fields carried for export

    def __post_init__(self):
        self.attention = MaskVariant(self.attention)
        self.block_alignment = BlockAlignment(self.block_alignment)
        self.attention_backend = AttentionBackend(self.attention_backend)
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        problems = []
        if self.num_attention_heads % self.num_query_groups:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_query_groups "
                            f"({self.num_query_groups})")
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        elif self.rotary_dim % 2 or not 0 < self.rotary_fraction <= 1:
            problems.append(f"rotary_fraction ({self.rotary_fraction}) of head_dim ({self.head_dim}) must give an even "
                            "number of rotated channels")
        if not 0 <= self.mask_token_id < self.vocab_size:
            problems.append(f"mask_token_id ({self.mask_token_id}) is outside the vocabulary of {self.vocab_size}")
        if self.block_size < 1 or self.sub_block_size < 1 or self.block_size % self.sub_block_size:
            problems.append(f"block_size ({self.block_size}) must be a positive multiple of sub_block_size "
                            f"({self.sub_block_size})")
        if self.padded_vocab_size is not None and self.padded_vocab_size < self.vocab_size:
            problems.append(f"padded_vocab_size ({self.padded_vocab_size}) < vocab_size ({self.vocab_size})")
        if problems:
            raise ValueError(f"invalid {self.family} model config: " + "; ".join(problems))

    def with_overrides(self, **overrides) -> "DLLMConfig":
        """This config with some fields replaced; a `moe` given as a dict replaces only the MoE
        fields it names (`model.overrides={moe: {aux_loss_coeff: 0.01}}`)."""
        return dataclasses.replace(self, **merge_moe(self.moe, overrides))

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    @property
    def moe_layers(self) -> list[int]:
        """Global indices of the layers with experts."""
        return [i for i in range(self.num_layers) if self.moe is not None and self.moe.is_moe_layer(i)]

    def padded_vocab(self, tp: int) -> int:
        """The stored padded size, or the vocabulary rounded up to divisible_by * TP."""
        if self.padded_vocab_size is not None:
            return self.padded_vocab_size
        multiple = self.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple

    def check_parallel(self, tp: int, pp: int, ep: int = 1, etp: int = 1) -> None:
        """Raise before any work if the layout cannot split this model (ep, etp: expert parallel
        and expert tensor parallel sizes)."""
        problems = []
        if self.moe is None and ep > 1:
            problems.append(f"EP={ep} needs a mixture-of-experts model ({self.family} has dense MLPs)")
        if self.moe is not None:
            if self.moe.num_experts % ep:
                problems.append(f"EP={ep} does not divide num_experts={self.moe.num_experts}")
            if self.moe.ffn_hidden_size % etp:
                problems.append(f"ETP={etp} does not divide the experts' ffn_hidden_size={self.moe.ffn_hidden_size}")
            if self.moe.shared_expert_ffn_hidden_size % tp:
                problems.append(f"TP={tp} does not divide shared_expert_ffn_hidden_size="
                                f"{self.moe.shared_expert_ffn_hidden_size}")
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
        d = dataclasses.asdict(self)  # moe: a plain dict (MoEConfig(**d) in __post_init__)
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
                           cp: int = 1, ep: int = 1, etp: int = 1, te_experts: bool = False):
        """The megatron-core TransformerConfig of this model at a parallel layout (CP: context-parallel
        size; EP, ETP: expert-parallel and expert tensor-parallel sizes; `te_experts`: the Transformer
        Engine layer spec's grouped-GEMM experts with fused token permutation)."""
        from megatron.core.transformer.transformer_config import TransformerConfig

        self.check_parallel(tp, pp, ep, etp)
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
            moe_token_dispatcher_type="alltoall",  # megatron-core's check for the line above wants it, MoE or not
            # megatron-core's MoE layer trains at TP > 1 only with sequence parallelism (each TP rank
            # routes its own tokens); dense models keep whole sequences on every TP rank
            sequence_parallel=self.sequence_parallel(tp),
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp,
            **self._moe_fields(te_experts),
        )

    def sequence_parallel(self, tp: int) -> bool:
        """Whether activations outside attention and MLP are split over the TP ranks' sequence."""
        return self.moe is not None and tp > 1

    def _moe_fields(self, te_experts: bool) -> dict:
        """TransformerConfig's MoE fields: with TE's layer spec the experts run as one grouped GEMM
        with fused permutation; with the local spec as megatron-core's SequentialMLP."""
        if self.moe is None:
            return {}
        m = self.moe
        return dict(
            num_moe_experts=m.num_experts,
            moe_ffn_hidden_size=m.ffn_hidden_size,
            moe_router_topk=m.topk,
            moe_layer_freq=[int(m.is_moe_layer(i)) for i in range(self.num_layers)],
            moe_shared_expert_intermediate_size=m.shared_expert_ffn_hidden_size or None,
            moe_router_score_function=m.score_function,
            # softmax: normalized top-k is the softmax of the top-k logits (pre_softmax False)
            moe_router_pre_softmax=m.score_function == "softmax" and not m.normalize_topk,
            moe_router_enable_expert_bias=m.expert_bias,
            moe_router_bias_update_rate=m.bias_update_rate,
            moe_router_num_groups=m.num_groups,
            moe_router_group_topk=m.group_topk,
            moe_router_topk_scaling_factor=m.routed_scaling_factor,
            moe_router_dtype="fp32",
            moe_router_load_balancing_type="aux_loss" if m.aux_loss_coeff else "none",
            moe_aux_loss_coeff=m.aux_loss_coeff,
            moe_expert_capacity_factor=None,
            moe_grouped_gemm=te_experts,
            moe_permute_fusion=te_experts,
        )


def merge_moe(moe: MoEConfig | None, overrides: dict) -> dict:
    """`overrides` with a dict `moe` merged onto `moe` (when there is one)."""
    if isinstance(overrides.get("moe"), dict) and moe is not None:
        return {**overrides, "moe": dataclasses.replace(moe, **overrides["moe"])}
    return overrides
