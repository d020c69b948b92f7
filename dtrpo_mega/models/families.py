"""Model families and their sizes, as data.

Family traits follow the method doc's model table; sizes follow the public `config.json` of the
checkpoints named beside them (Fast-dLLM v2 is initialized from Qwen2.5 Instruct, SDAR from
Qwen3, Dream from Qwen2.5-7B). `tiny` exists for every family: a debug model that runs anywhere,
with a vocabulary that is not a multiple of 128 so that vocabulary padding is always exercised.
"""

from __future__ import annotations

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.models.config import DLLMConfig

FAMILY_TRAITS: dict[str, dict] = {
    # Qwen2 layout (q/k/v bias), block diffusion, shifted logits.
    "fast_dllm_v2": dict(qkv_bias=True, mask_token_id=151665, block_size=32, sub_block_size=8, logits_shift=True,
                         attention=MaskVariant.BLOCK_DIFFUSION, rope_theta=1e6, norm_eps=1e-6),
    # Qwen3 layout (q/k RMSNorm, no bias), block diffusion, no shift.
    "sdar": dict(qk_norm=True, mask_token_id=151669, block_size=4, sub_block_size=4,
                 attention=MaskVariant.BLOCK_DIFFUSION, rope_theta=1e6, norm_eps=1e-6),
    # LLaMA-like, full bidirectional attention; blocks only structure semi-autoregressive decoding.
    "llada": dict(mask_token_id=126336, block_size=32, sub_block_size=32,
                  attention=MaskVariant.BIDIRECTIONAL, rope_theta=500000.0, norm_eps=1e-5),
    # Qwen2 layout, full bidirectional attention, shifted logits.
    "dream": dict(qkv_bias=True, mask_token_id=151666, block_size=32, sub_block_size=32, logits_shift=True,
                  attention=MaskVariant.BIDIRECTIONAL, rope_theta=1e6, norm_eps=1e-6),
}

_TINY = dict(vocab_size=250, hidden_size=64, ffn_hidden_size=128, num_layers=4, num_attention_heads=4,
             num_query_groups=2, max_position_embeddings=512)
_TINY_BLOCKS = {"fast_dllm_v2": dict(block_size=8, sub_block_size=4), "sdar": dict(block_size=4, sub_block_size=4),
                "llada": dict(block_size=8, sub_block_size=8), "dream": dict(block_size=8, sub_block_size=8)}

_QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, ffn_hidden_size=18944, num_layers=28, num_attention_heads=28,
                  num_query_groups=4, tie_embeddings=False)

SIZES: dict[str, dict[str, dict]] = {
    "fast_dllm_v2": {
        "1.5b": dict(vocab_size=151936, hidden_size=1536, ffn_hidden_size=8960, num_layers=28, num_attention_heads=12,
                     num_query_groups=2, tie_embeddings=True),  # Efficient-Large-Model/Fast_dLLM_v2_1.5B
        "7b": _QWEN25_7B,  # Efficient-Large-Model/Fast_dLLM_v2_7B
    },
    "sdar": {
        "1.7b": dict(vocab_size=151936, hidden_size=2048, ffn_hidden_size=6144, num_layers=28, num_attention_heads=16,
                     num_query_groups=8, head_dim=128, tie_embeddings=True),  # JetLM/SDAR-1.7B-Chat
        "4b": dict(vocab_size=151936, hidden_size=2560, ffn_hidden_size=9728, num_layers=36, num_attention_heads=32,
                   num_query_groups=8, head_dim=128, tie_embeddings=True),  # JetLM/SDAR-4B-Chat
        "8b": dict(vocab_size=151936, hidden_size=4096, ffn_hidden_size=12288, num_layers=36, num_attention_heads=32,
                   num_query_groups=8, head_dim=128, tie_embeddings=False),  # JetLM/SDAR-8B-Chat
    },
    "llada": {
        "8b": dict(vocab_size=126464, hidden_size=4096, ffn_hidden_size=12288, num_layers=32, num_attention_heads=32,
                   num_query_groups=32, tie_embeddings=False),  # GSAI-ML/LLaDA-8B-Instruct
    },
    "dream": {"7b": _QWEN25_7B},  # Dream-org/Dream-v0-Instruct-7B
}


def model_config(family: str, size: str = "tiny", **overrides) -> DLLMConfig:
    """A family's config at a named size; keyword overrides win."""
    if family not in FAMILY_TRAITS:
        raise ValueError(f"unknown model family {family!r}; supported: {sorted(FAMILY_TRAITS)}")
    sizes = {"tiny": {**_TINY, **_TINY_BLOCKS[family]}, **SIZES[family]}
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for family {family!r}; available: {sorted(sizes)}")
    fields = {**FAMILY_TRAITS[family], **sizes[size], **overrides}
    if size == "tiny" and "mask_token_id" not in overrides:
        fields["mask_token_id"] = fields["vocab_size"] - 1
    return DLLMConfig(family=family, **fields)
