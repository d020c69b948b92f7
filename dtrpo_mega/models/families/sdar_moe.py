"""SDAR-30B-A3B (JetAstra/SDAR @c2041a8; JetLM/SDAR-30B-A3B-Chat): Qwen3-30B-A3B-Base turned into a
block-diffusion mixture-of-experts LLM with SDAR's recipe.

Everything but the MLP is SDAR's (`sdar.py`: block 4, unshifted logits, mask 151669, chat template,
SFT, decoding); the SDAR repository ships no 30B config or MoE modeling file, so the layout is
Qwen3-MoE's (Qwen/Qwen3-30B-A3B config.json; `Qwen3MoeSparseMoeBlock` in transformers; JetEngine
@11563d1 `jetengine/models/sdar_moe.py` and sglang's `sdar_moe.py` implement SDAR-MoE the same way):
every layer routes over 128 experts, 8 per token, no shared expert, no expert bias, no groups.
Router: float32 softmax over all experts, the top 8, renormalized (`norm_topk_prob` true), which is
megatron-core's softmax after top-k (`moe_router_pre_softmax` false). Qwen3-MoE trains with a
load-balancing loss of coefficient 0.001 (`router_aux_loss_coef`): the default here.
"""

import dataclasses

from dtrpo_mega.models.config import MoEConfig
from dtrpo_mega.models.families import sdar
from dtrpo_mega.models.families.spec import TRANSFORMERS_MOE_NAMES, Size, SourceFormat

FAMILY = dataclasses.replace(
    sdar.FAMILY,
    name="sdar_moe",
    sizes={
        "30b_a3b": Size(dict(vocab_size=151936, hidden_size=2048, ffn_hidden_size=6144, num_layers=48,
                             num_attention_heads=32, num_query_groups=4, head_dim=128, tie_embeddings=False,
                             max_position_embeddings=40960,
                             moe=MoEConfig(num_experts=128, ffn_hidden_size=768, topk=8, aux_loss_coeff=0.001)),
                        "Qwen/Qwen3-30B-A3B config.json (its base; SDAR-30B-A3B's own config.json was not found)"),
    },
    tiny_blocks=dict(sdar.FAMILY.tiny_blocks, moe=MoEConfig(num_experts=8, ffn_hidden_size=32, topk=2,
                                                            aux_loss_coeff=0.001)),
    # JetEngine routes `model_type`s holding "sdar" and "moe"; sglang names the architecture
    formats=(SourceFormat("sdar_moe", ("SDARMoeForCausalLM",), ("sdar_moe",), "sdar_moe", TRANSFORMERS_MOE_NAMES,
                          qk_norm=True, block_size_key="block_size"),),
    sources=(*sdar.FAMILY.sources, "Qwen/Qwen3-30B-A3B config.json", "Labman42/JetEngine @11563d1 "
             "jetengine/models/sdar_moe.py"),
)
