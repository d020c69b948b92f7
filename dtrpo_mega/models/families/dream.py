"""Dream (HKUNLP/Dream, DreamLM/Dream): Qwen2.5-7B turned into a full-attention masked-diffusion LLM.

- Layout: Qwen2 (q/k/v biases); full bidirectional attention; shifted logits (token j is read
  from the logit at j - 1); mask token 151666 (`configuration_dream.py`).
- Decoding (`generation_utils.py` `_sample`): the prompt followed by max_new_tokens masks, the
  whole canvas denoised, no early stop; the semi-autoregressive variant (Fast-dLLM v1's
  `dream/model/generation_utils_block.py`) cuts the canvas into blocks that start at the
  prompt's end. Every later slot is [M] while a block is decoded, hence `scoring=per_block`.
- Chat template: ChatML, default system message "You are a helpful assistant."
  (`demo_multiturn_chat.py`'s rendered example).
- SFT (DreamLM/Dream-Coder `fsdp_sft_trainer.py`, the only Dream-team SFT code published):
  response + EOS, padded with the pad token `<|endoftext|>` and trained (hence `last_block=fill`);
  one t per example, shifted cross-entropy at the masked positions weighted 1/t (`original`;
  `cart` reweighting is not offered), summed over the micro-batch's masked tokens' count.
"""

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment, LastBlock, ScoringLayout, SFTConvention, SFTNormalizer
from dtrpo_mega.models.families.spec import TRANSFORMERS_NAMES, Decoding, Family, Size, SourceFormat, chatml

DREAM_CHATML = chatml("dream_chatml", default_system="You are a helpful assistant.")

FAMILY = Family(
    name="dream",
    traits=dict(qkv_bias=True, mask_token_id=151666, block_size=32, sub_block_size=32, logits_shift=True,
                attention=MaskVariant.BIDIRECTIONAL, block_alignment=BlockAlignment.PROMPT_END, rope_theta=1e6,
                norm_eps=1e-6),
    sizes={
        "7b": Size(dict(vocab_size=152064, hidden_size=3584, ffn_hidden_size=18944, num_layers=28,
                        num_attention_heads=28, num_query_groups=4, tie_embeddings=False),
                   "Qwen/Qwen2.5-7B config.json (its base; Dream-v0-Instruct-7B's own config.json was not found)"),
    },
    tiny_blocks=dict(block_size=8, sub_block_size=8),
    chat=DREAM_CHATML,
    formats=(SourceFormat("dream", ("DreamModel",), ("dream",), "dream", TRANSFORMERS_NAMES, qkv_bias=True),),
    sft=SFTConvention(inverse_t=True, one_t=True, complementary=False, normalizer=SFTNormalizer.MASKED_TOKENS),
    scoring=ScoringLayout.PER_BLOCK,
    last_block=LastBlock.FILL,
    stops_at_end_of_turn=False,
    decoding=Decoding(tokens_per_step=1),  # steps = max_new_tokens in its examples: one token a step
    sources=("DreamLM/Dream @fac0a7f", "DreamLM/Dream-Coder @87409da instruct/src/trainer/",
             "NVlabs/Fast-dLLM dream/model/"),
)
