"""LLaDA and LLaDA 1.5 (ML-GSAI/LLaDA, commit b7e6c35): a LLaMA-shaped full-attention masked-diffusion LLM.

- Layout: full bidirectional attention, unshifted logits, OLMo-derived config fields and weight
  names; mask token 126336.
- Decoding (`generate.py`): blocks of `block_length` that start at the prompt's end
  (`x[:, P + b * block_length : ...]`), low-confidence remasking, every later slot [M] while a
  block is decoded (hence `scoring=per_block`), no early stop: all of `gen_length` is decoded, the
  tail filling with EOS.
- Chat template: Llama 3's headers after BOS `<|startoftext|>` (126080, generation_config.json),
  no default system message; answers end with `<|eot_id|>` (126348).
- SFT (GUIDELINES.md): answers padded with EOS `<|endoftext|>` (126081), counted in the answer
  length and trained (hence `last_block=fill`); one t per example, masked cross-entropy / p_mask,
  summed over each answer and divided by its length, then the mean over examples.
"""

from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment, LastBlock, ScoringLayout, SFTConvention, SFTNormalizer
from dtrpo_mega.models.families.spec import ChatTemplate, Decoding, Family, Size, SourceFormat, reject_features

LLAMA3_CHAT = ChatTemplate(
    name="llada_llama3",
    turn="<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
    generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    bos="<|startoftext|>",
    strip_content=True,
    block_fill="<|endoftext|>",
)

# Checked against the public modeling file (`LLaDALlamaBlock`): `ff_proj` goes through the
# activation (the gate) and is multiplied by `up_proj`; the block's `ff_out` is the down
# projection, the model-level `transformer.ff_out` the output layer (absent when `weight_tying`).
_QKV = "decoder.layers.*.self_attention.linear_qkv"
WEIGHT_NAMES: dict[str, tuple[str, ...]] = {
    "embedding.word_embeddings.weight": ("model.transformer.wte.weight",),
    f"{_QKV}.layer_norm_weight": ("model.transformer.blocks.*.attn_norm.weight",),
    f"{_QKV}.weight": tuple(f"model.transformer.blocks.*.{p}_proj.weight" for p in "qkv"),
    f"{_QKV}.bias": tuple(f"model.transformer.blocks.*.{p}_proj.bias" for p in "qkv"),
    "decoder.layers.*.self_attention.linear_proj.weight": ("model.transformer.blocks.*.attn_out.weight",),
    "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": ("model.transformer.blocks.*.ff_norm.weight",),
    "decoder.layers.*.mlp.linear_fc1.weight": ("model.transformer.blocks.*.ff_proj.weight",
                                               "model.transformer.blocks.*.up_proj.weight"),
    "decoder.layers.*.mlp.linear_fc2.weight": ("model.transformer.blocks.*.ff_out.weight",),
    "decoder.final_layernorm.weight": ("model.transformer.ln_f.weight",),
    "output_layer.weight": ("model.transformer.ff_out.weight",),
}


def read_structure(c: dict) -> dict:
    """DLLMConfig structure fields of LLaDA's OLMo-style config.json (`d_model`, `n_heads`, ...)."""
    expected = dict(block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True, block_group_size=1,
                    layer_norm_with_affine=True, attention_layer_norm=False, include_bias=False,
                    bias_for_layer_norm=False, scale_logits=False, input_emb_norm=False, alibi=False)
    differs = lambda value, want: value != want and not (want is False and value is None)  # noqa: E731
    reject_features([f"{k}={c[k]!r} (need {v!r})" for k, v in expected.items() if k in c and differs(c[k], v)],
                    "config.json (llada)")
    heads = c["n_heads"]
    return dict(
        vocab_size=c.get("embedding_size") or c["vocab_size"], hidden_size=c["d_model"],
        ffn_hidden_size=c.get("mlp_hidden_size") or c["mlp_ratio"] * c["d_model"], num_layers=c["n_layers"],
        num_attention_heads=heads,
        num_query_groups=c.get("n_kv_heads") or (1 if c.get("multi_query_attention") else heads),
        rope_theta=float(c.get("rope_theta", 10000.0)), norm_eps=c.get("rms_norm_eps", 1e-5),
        qkv_bias=bool(c.get("include_qkv_bias", False)), qk_norm=False,
        tie_embeddings=bool(c.get("weight_tying", False)), max_position_embeddings=c.get("max_sequence_length", 4096),
    )


def write_structure(cfg) -> dict:
    """The OLMo-style config.json fields of a DLLMConfig (the inverse of `read_structure`)."""
    return dict(
        d_model=cfg.hidden_size, n_heads=cfg.num_attention_heads, n_kv_heads=cfg.num_query_groups,
        n_layers=cfg.num_layers, mlp_hidden_size=cfg.ffn_hidden_size, vocab_size=cfg.vocab_size,
        embedding_size=cfg.vocab_size, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        include_qkv_bias=cfg.qkv_bias, weight_tying=cfg.tie_embeddings, max_sequence_length=cfg.max_position_embeddings,
        block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True,
    )


FAMILY = Family(
    name="llada",
    traits=dict(mask_token_id=126336, block_size=32, sub_block_size=32, attention=MaskVariant.BIDIRECTIONAL,
                block_alignment=BlockAlignment.PROMPT_END, rope_theta=500000.0, norm_eps=1e-5),
    sizes={
        "8b": Size(dict(vocab_size=126464, hidden_size=4096, ffn_hidden_size=12288, num_layers=32,
                        num_attention_heads=32, num_query_groups=32, tie_embeddings=False),
                   "GSAI-ML/LLaDA-8B-Instruct config.json (a copy in radi-cho/reasoning-diffusion @49e3510)"),
    },
    tiny_blocks=dict(block_size=8, sub_block_size=8),
    chat=LLAMA3_CHAT,
    formats=(SourceFormat("llada", ("LLaDAModelLM",), ("llada",), "llada", WEIGHT_NAMES, read_structure=read_structure,
                          write_structure=write_structure),),
    sft=SFTConvention(inverse_t=True, one_t=True, complementary=False, normalizer=SFTNormalizer.SEQUENCE_LENGTH),
    scoring=ScoringLayout.PER_BLOCK,
    last_block=LastBlock.FILL,
    stops_at_end_of_turn=False,
    decoding=Decoding(tokens_per_step=1),  # generate.py's examples: steps = gen_length, one token a step
    sources=("ML-GSAI/LLaDA @b7e6c35: generate.py, GUIDELINES.md, chat.py",),
)
