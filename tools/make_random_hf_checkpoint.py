"""Write a random Hugging Face checkpoint straight to safetensors shards, one tensor at a time.

  python tools/make_random_hf_checkpoint.py --out /tmp/fast_dllm_v2_1.5b_random [--size 1.5b|tiny] [--dtype bf16]

The layout is Qwen2's (q/k/v biases, gated MLP) with Fast-dLLM v2's config.json fields; `1.5b`
has Fast_dLLM_v2_1.5B's shape (hidden 1536, ffn 8960, 28 layers, 12 heads, 2 KV groups,
vocabulary 151936, tied embeddings). For conversion benchmarks: the weights mean nothing, and
no model is ever built in memory. Write it outside the repository.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


from dtrpo_mega.convert.hf_io import TORCH_DTYPES, PlannedTensor, SafetensorsWriter, dtype_name  # noqa: E402

SIZES = {
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2),
    "tiny": dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}


def tensor_plan(c: dict, dtype: torch.dtype) -> list[PlannedTensor]:
    h, ffn, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (h, h), "self_attn.q_proj.bias": (h,),
        "self_attn.k_proj.weight": (kv, h), "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, h), "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, h),
        "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn),
    }
    plan = [PlannedTensor("model.embed_tokens.weight", (c["vocab_size"], h), dtype)]
    for i in range(c["num_hidden_layers"]):
        plan += [PlannedTensor(f"model.layers.{i}.{name}", shape, dtype) for name, shape in layer.items()]
    return plan + [PlannedTensor("model.norm.weight", (h,), dtype)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="1.5b", choices=sorted(SIZES))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"])
    parser.add_argument("--max-shard-bytes", type=int, default=2 * 10**9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dtype = TORCH_DTYPES[args.dtype]
    c = SIZES[args.size]
    config = dict(
        architectures=["Fast_dLLM_QwenForCausalLM"], model_type="Fast_dLLM_Qwen", bd_size=32, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        torch_dtype=dtype_name(dtype), use_sliding_window=False, **c,
    )
    out = Path(args.out)
    plan = tensor_plan(c, dtype)
    writer = SafetensorsWriter(out, plan, args.max_shard_bytes)
    generator = torch.Generator().manual_seed(args.seed)
    for t in plan:
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
        writer.write(t.name, (noise.mul_(0.1).add_(1) if "norm" in t.name else noise.mul_(0.02)).to(dtype))
    writer.close()
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {sum(t.nbytes for t in plan) / 1e9:.2f} GB in {len(writer.shards)} shards to {out}")


if __name__ == "__main__":
    main()
