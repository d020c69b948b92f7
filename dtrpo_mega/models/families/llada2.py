"""LLaDA2.0 (inclusionAI; dFactory @92b6890, its SFT recipe and the model's remote code): Ling 2.0
(`BailingMoeV2`) turned into a block-diffusion mixture-of-experts LLM.

- Layout (`configs/model_configs/llada2_mini/config.json`, `modeling_llada2_moe.py`): one fused
  `query_key_value` (all q heads, then k, then v), q/k RMSNorm per head, rope on the first half of
  each head (`partial_rotary_factor` 0.5, theta 600000), no biases, untied head. Layer 0 has a
  dense MLP (`first_k_dense_replace` 1); layers 1-19 route over 256 experts, 8 per token, plus one
  shared expert always added.
- Router (`LLaDA2MoeGate`): float32 sigmoid scores; the per-expert `expert_bias` is added for the
  choice only; group-limited: of 8 groups of 32, the 4 with the largest sum of their top-2 biased
  scores; then the top 8 experts; weights are the unbiased scores over their sum (+1e-20), times
  `routed_scaling_factor` 2.5. megatron-core's sigmoid router with expert bias, 8 groups, group
  top-4 computes the same (its group score is the sum of the top topk/group_topk = 2). dFactory
  trains with no auxiliary loss and no bias update; both are options here (`moe.aux_loss_coeff`,
  megatron-core's bias update at `moe.bias_update_rate`, off unless set).
- Diffusion (`tasks/train_llada2_bd.py`): `[x_t ; x_0]` rows, block-causal attention in absolute
  blocks of 32 counted from position 0, unshifted logits (`same_token_labels: true`); mask token
  156895 (hard-coded in the trainer and in `generate`).
- Decoding (`LLaDA2MoeModelLM.generate`): blocks of 32, threshold 0.95 (at least the scheduled
  count a step), stops after the block holding EOS `<|endoftext|>` (156892).
- Chat template: Ling 2.0's `<role>SYSTEM</role>...<|role_end|><role>HUMAN</role>...`, the system
  turn always ending with "detailed thinking off" (as sglang's and dInfer's LLaDA2.0-mini prompts).
- SFT (`tasks/dataset/data_transform.py`, the trainer's loss): one t per sequence, sequences padded
  with the pad token `<|endoftext|>` and trained (hence `last_block=fill`); masked cross-entropy
  with no 1/t, summed and divided by the number of masked tokens.
"""

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment, LastBlock, SFTConvention, SFTNormalizer
from dtrpo_mega.models.config import MoEConfig
from dtrpo_mega.models.families.spec import ChatTemplate, Decoding, Family, Size, SourceFormat, reject_features

LING_CHAT = ChatTemplate(
    name="llada2_ling",
    turn="<role>{role}</role>{content}<|role_end|>",
    generation_prompt="<role>ASSISTANT</role>",
    end_of_turn="<|role_end|>",
    block_fill="<|endoftext|>",
    role_names={"system": "SYSTEM", "user": "HUMAN", "assistant": "ASSISTANT"},
    system_suffix="detailed thinking off",
)


# Ling 2.0 weight names (dFactory `scripts/moe_convertor.py`, Megatron-Bridge's bailing bridge);
# `#` is the expert index. The pre-MLP norm is `mlp.linear_fc1.layer_norm_weight` in megatron-core's
# checkpoint whether the layer is dense or MoE (models/dllm.py keys both specs so).
_L = "model.layers.*."
WEIGHT_NAMES: dict[str, tuple[str, ...]] = {
    "embedding.word_embeddings.weight": ("model.word_embeddings.weight",),
    "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight": (f"{_L}input_layernorm.weight",),
    "decoder.layers.*.self_attention.linear_qkv.weight": (f"{_L}attention.query_key_value.weight",),
    "decoder.layers.*.self_attention.q_layernorm.weight": (f"{_L}attention.query_layernorm.weight",),
    "decoder.layers.*.self_attention.k_layernorm.weight": (f"{_L}attention.key_layernorm.weight",),
    "decoder.layers.*.self_attention.linear_proj.weight": (f"{_L}attention.dense.weight",),
    "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": (f"{_L}post_attention_layernorm.weight",),
    "decoder.layers.*.mlp.linear_fc1.weight": (f"{_L}mlp.gate_proj.weight", f"{_L}mlp.up_proj.weight"),
    "decoder.layers.*.mlp.linear_fc2.weight": (f"{_L}mlp.down_proj.weight",),
    "decoder.layers.*.mlp.router.weight": (f"{_L}mlp.gate.weight",),
    "decoder.layers.*.mlp.router.expert_bias": (f"{_L}mlp.gate.expert_bias",),
    "decoder.layers.*.mlp.shared_experts.linear_fc1.weight": (f"{_L}mlp.shared_experts.gate_proj.weight",
                                                             f"{_L}mlp.shared_experts.up_proj.weight"),
    "decoder.layers.*.mlp.shared_experts.linear_fc2.weight": (f"{_L}mlp.shared_experts.down_proj.weight",),
    "decoder.layers.*.mlp.experts.experts.linear_fc1.weight": (f"{_L}mlp.experts.#.gate_proj.weight",
                                                              f"{_L}mlp.experts.#.up_proj.weight"),
    "decoder.layers.*.mlp.experts.experts.linear_fc2.weight": (f"{_L}mlp.experts.#.down_proj.weight",),
    "decoder.final_layernorm.weight": ("model.norm.weight",),
    "output_layer.weight": ("lm_head.weight",),
}


def read_structure(c: dict) -> dict:
    """DLLMConfig structure fields of a LLaDA2 (`LLaDA2MoeModelLM`) config.json. Its router code reads
    no `score_function` / `norm_topk_prob` / expert-bias switch: sigmoid, normalized, biased always."""
    expected = dict(hidden_act="silu", use_qkv_bias=False, use_bias=False, use_rmsnorm=True, norm_head=False,
                    use_sliding_window=False, score_function="sigmoid", norm_topk_prob=True)
    reject_features([f"{k}={c[k]!r} (need {v!r})" for k, v in expected.items() if k in c and c[k] != v],
                    "config.json (llada2)")
    heads, hd = c["num_attention_heads"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    rotary = c.get("rotary_dim") or int(hd * c.get("partial_rotary_factor", 1.0))
    return dict(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], ffn_hidden_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_attention_heads=heads,
        num_query_groups=c.get("num_key_value_heads") or heads, head_dim=hd, rotary_fraction=rotary / hd,
        rope_theta=float(c.get("rope_theta", 600000.0)), norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=False,
        qk_norm=True, tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=c.get("max_position_embeddings", 16384),
        moe=ling_router(num_experts=c["num_experts"], ffn_hidden_size=c["moe_intermediate_size"],
                        topk=c["num_experts_per_tok"],
                        shared_expert_ffn_hidden_size=c["moe_intermediate_size"] * c.get("num_shared_experts", 0),
                        first_dense_layers=c.get("first_k_dense_replace", 0), num_groups=c.get("n_group"),
                        group_topk=c.get("topk_group"), routed_scaling_factor=c.get("routed_scaling_factor")),
    )


def write_structure(cfg) -> dict:
    """The config.json fields of a LLaDA2 DLLMConfig (the inverse of `read_structure`)."""
    m = cfg.moe
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
        partial_rotary_factor=cfg.rotary_fraction, rotary_dim=cfg.rotary_dim, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings, hidden_act="silu", use_qkv_bias=False, use_bias=False,
        use_qk_norm=True, num_experts=m.num_experts, num_experts_per_tok=m.topk,
        moe_intermediate_size=m.ffn_hidden_size,
        num_shared_experts=m.shared_expert_ffn_hidden_size // m.ffn_hidden_size,
        first_k_dense_replace=m.first_dense_layers,
        n_group=m.num_groups, topk_group=m.group_topk, routed_scaling_factor=m.routed_scaling_factor,
        score_function="sigmoid", norm_topk_prob=True, moe_router_enable_expert_bias=True, router_dtype="fp32",
    )


def ling_router(**fields) -> MoEConfig:
    """Ling 2.0's routing (see the module docstring) around a size's expert counts."""
    return MoEConfig(**{**dict(score_function="sigmoid", normalize_topk=True, expert_bias=True, bias_update_rate=0.0,
                               first_dense_layers=1), **fields})


FAMILY = Family(
    name="llada2",
    traits=dict(qk_norm=True, mask_token_id=156895, block_size=32, sub_block_size=32, rotary_fraction=0.5,
                attention=MaskVariant.BLOCK_DIFFUSION, block_alignment=BlockAlignment.ABSOLUTE, rope_theta=600000.0,
                norm_eps=1e-6),
    sizes={
        "mini": Size(dict(vocab_size=157184, hidden_size=2048, ffn_hidden_size=5120, num_layers=20,
                          num_attention_heads=16, num_query_groups=4, head_dim=128, tie_embeddings=False,
                          max_position_embeddings=16384,
                          moe=ling_router(num_experts=256, ffn_hidden_size=512, topk=8,
                                          shared_expert_ffn_hidden_size=512, num_groups=8, group_topk=4,
                                          routed_scaling_factor=2.5)),
                     "inclusionAI/dFactory @92b6890 configs/model_configs/llada2_mini/config.json (the -preview "
                     "release's)"),
    },
    tiny_blocks=dict(block_size=8, sub_block_size=8,
                     moe=ling_router(num_experts=8, ffn_hidden_size=32, topk=4, shared_expert_ffn_hidden_size=32,
                                     num_groups=4, group_topk=2, routed_scaling_factor=2.5)),
    chat=LING_CHAT,
    formats=(SourceFormat("llada2", ("LLaDA2MoeModelLM",), ("llada2_moe",), "llada2", WEIGHT_NAMES,
                          qk_norm=True, read_structure=read_structure, write_structure=write_structure),),
    sft=SFTConvention(inverse_t=False, one_t=True, complementary=False, normalizer=SFTNormalizer.MASKED_TOKENS),
    last_block=LastBlock.FILL,
    decoding=Decoding(threshold=0.95),
    sources=("inclusionAI/dFactory @92b6890: configs/model_configs/llada2_mini/, tasks/train_llada2_bd.py, "
             "tasks/dataset/data_transform.py, modeling_llada2_moe.py",
             "NVIDIA-NeMo/Megatron-Bridge @067f987 models/bailing/ (the Ling 2.0 bridge)"),
)
