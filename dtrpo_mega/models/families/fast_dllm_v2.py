"""Fast-dLLM v2 (NVlabs/Fast-dLLM, folder v2, commit 6cf2722; the model's remote code in
Efficient-Large-Model/Fast_dLLM_v2_7B): Qwen2.5 Instruct turned into a block-diffusion LLM.

- Layout: Qwen2 (q/k/v biases); block-causal `[x_t ; x_0]` attention; shifted logits (token j is
  read from the logit at j - 1); mask token `|<MASK>|` = 151665.
- Decoding (`generate`, `v2/generation_functions.py`): absolute blocks of 32 (`bd_size`) counted
  from position 0, sub-blocks of 8 (`small_block_size`), threshold 0.9 (eval.py); a block's first
  token is its own step, read from the finished previous block's last logit. `generate` stops as
  soon as `<|im_end|>` is decoded with nothing masked before it: the rest of that block stays
  `|<MASK>|` (hence `last_block=mask`).
- Chat template (`chat_template.jinja` of the 7B folder; `Fast_dLLM_v2_TEMPLATE` in
  `v2/src/lmflow/utils/conversation_template/qwen.py`): ChatML, no BOS, default system message
  "You are a helpful assistant." (not Qwen2.5's "You are Qwen, created by Alibaba Cloud...").
- SFT (the training branch of `Fast_dLLM_QwenForCausalLM.forward`): t ~ U per block of 32, a
  second copy with the complementary mask, no 1/t, HF's shifted causal-LM loss over the noisy
  half (so a block's first token is read from the noisy copy's previous position), summed over
  the answer tokens and divided by their count.
"""

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment, FirstTokenRule, LastBlock, SFTConvention, SFTNormalizer
from dtrpo_mega.models.families.spec import (
    Decoding,
    TRANSFORMERS_NAMES,
    Family,
    Size,
    SourceFormat,
    chatml,
)

# `<|endoftext|>` is its pad token: `batch_sample` overwrites everything after the stop token with it
QWEN2_5_CHATML = chatml("fast_dllm_v2_chatml", default_system="You are a helpful assistant.")

FAMILY = Family(
    name="fast_dllm_v2",
    traits=dict(qkv_bias=True, mask_token_id=151665, block_size=32, sub_block_size=8, logits_shift=True,
                attention=MaskVariant.BLOCK_DIFFUSION, block_alignment=BlockAlignment.ABSOLUTE, rope_theta=1e6,
                norm_eps=1e-6),
    sizes={
        "1.5b": Size(dict(vocab_size=151936, hidden_size=1536, ffn_hidden_size=8960, num_layers=28,
                          num_attention_heads=12, num_query_groups=2, tie_embeddings=True),
                     "Qwen/Qwen2.5-1.5B-Instruct config.json (its base; Fast_dLLM_v2_1.5B's own config.json was not "
                     "found)"),
        "7b": Size(dict(vocab_size=152064, hidden_size=3584, ffn_hidden_size=18944, num_layers=28,
                        num_attention_heads=28, num_query_groups=4, tie_embeddings=False),
                   "Efficient-Large-Model/Fast_dLLM_v2_7B config.json"),
    },
    tiny_blocks=dict(block_size=8, sub_block_size=4),
    chat=QWEN2_5_CHATML,
    formats=(SourceFormat("fast_dllm_v2", ("Fast_dLLM_QwenForCausalLM",), ("fast_dllm_qwen",), "fast_dllm_v2",
                          TRANSFORMERS_NAMES, qkv_bias=True, block_size_key="bd_size"),),
    sft=SFTConvention(inverse_t=False, one_t=False, complementary=True, normalizer=SFTNormalizer.RESPONSE_TOKENS,
                      first_token=FirstTokenRule.NOISY),
    last_block=LastBlock.MASK,
    decoding=Decoding(threshold=0.9),  # eval.py: threshold 0.9 in sub-blocks of 8
    sources=("NVlabs/Fast-dLLM v2/ @6cf2722", "Efficient-Large-Model/Fast_dLLM_v2_7B modeling.py, chat_template.jinja"),
)
