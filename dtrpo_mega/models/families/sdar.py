"""SDAR (JetAstra/SDAR, commit c2041a8): Qwen3-Base turned into a block-diffusion LLM.

- Layout: Qwen3 (q/k RMSNorm, no biases); block-causal attention; unshifted logits (token j is
  read from its own position); mask token `<|MASK|>` = 151669.
- Decoding (`generate.py`, `block_diffusion_generate`): absolute blocks of 4 counted from
  position 0, `low_confidence_dynamic` (4 steps a block, threshold 0.85-0.9); the stop tokens are
  checked only once a block is finished, so the last block is decoded whole.
- Chat template (`training/model/SDAR-4B-Chat/chat_template.jinja`): Qwen3's ChatML, no BOS, no
  default system message; the generation prompt has no think block (`generate.py` does not set
  `enable_thinking`), while the rendered final assistant turn, and the repo's LlamaFactory `qwen3`
  fine-tuning template, open every answer without reasoning with an empty `<think>\n\n</think>\n\n`,
  scored: so a conversational response starts with it.
- SFT (`modeling_sdar.py`, `fused_linear_diffusion_cross_entropy.py`, LlamaFactory
  `supervised.py`): every example is padded at its end to a multiple of the block size with the
  pad token `<|endoftext|>`, labelled and trained (hence `last_block=fill`); one t per example,
  every masked token's cross-entropy divided by p_mask, summed, over the number of response tokens
  (padding counted).
"""

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment
from dtrpo_mega.diffusion.spec import LastBlock, SFTConvention, SFTNormalizer
from dtrpo_mega.models.families.spec import TRANSFORMERS_NAMES, Decoding, Family, Size, SourceFormat, chatml

QWEN3_CHATML = chatml("sdar_chatml", response_prefix="<think>\n\n</think>\n\n")

_QWEN3 = dict(vocab_size=151936, num_query_groups=8, head_dim=128)

FAMILY = Family(
    name="sdar",
    traits=dict(qk_norm=True, mask_token_id=151669, block_size=4, sub_block_size=4,
                attention=MaskVariant.BLOCK_DIFFUSION, block_alignment=BlockAlignment.ABSOLUTE, rope_theta=1e6,
                norm_eps=1e-6),
    sizes={
        "1.7b": Size(dict(_QWEN3, hidden_size=2048, ffn_hidden_size=6144, num_layers=28, num_attention_heads=16,
                          tie_embeddings=True),
                     "Qwen/Qwen3-1.7B config.json (its base; SDAR-1.7B-Chat's own config.json was not found)"),
        "4b": Size(dict(_QWEN3, hidden_size=2560, ffn_hidden_size=9728, num_layers=36, num_attention_heads=32,
                        tie_embeddings=False),
                   "JetAstra/SDAR training/model/SDAR-4B-Chat/config.json (unlike Qwen3-4B, not tied)"),
        "8b": Size(dict(_QWEN3, hidden_size=4096, ffn_hidden_size=12288, num_layers=36, num_attention_heads=32,
                        tie_embeddings=False),
                   "Qwen/Qwen3-8B config.json (its base; SDAR-8B-Chat's own config.json was not found)"),
    },
    tiny_blocks=dict(block_size=4, sub_block_size=4),
    chat=QWEN3_CHATML,
    formats=(SourceFormat("sdar", ("SDARForCausalLM",), ("sdar",), "sdar", TRANSFORMERS_NAMES, qk_norm=True,
                          block_size_key="block_size"),),
    sft=SFTConvention(inverse_t=True, one_t=True, complementary=False, normalizer=SFTNormalizer.RESPONSE_TOKENS),
    last_block=LastBlock.FILL,
    # generate.py's low_confidence_dynamic with 4 steps a block of 4: every token above the threshold, else the most
    # confident one
    decoding=Decoding(threshold=0.9),
    sources=("JetAstra/SDAR @c2041a8: generate.py, training/model/SDAR-4B-Chat/, training/llama_factory_sdar/",),
)
