"""Write a random Hugging Face checkpoint of any family and size straight to safetensors shards,
one tensor at a time.

  python tools/make_random_hf_checkpoint.py --out /tmp/fast_dllm_v2_1.5b_random [--family fast_dllm_v2] \
[--size 1.5b] [--dtype bf16]

The shape is the family's preset (`dtrpo_mega/models/families/`, each size with the config.json it
comes from); the config.json and tensor names are the family's own Hugging Face format, so
`tools/convert_checkpoint.py import` reads it as that family. For conversion benchmarks: the
weights mean nothing, and no model is ever built in memory. Write it outside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from dtrpo_mega.convert.formats import source_config
from dtrpo_mega.convert.hf_io import TORCH_DTYPES, PlannedTensor, SafetensorsWriter, dtype_name
from dtrpo_mega.convert.importer import expected_hf_tensors
from dtrpo_mega.convert.name_maps import name_map
from dtrpo_mega.models.families import family_names, get_family, model_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--family", default="fast_dllm_v2", choices=family_names())
    parser.add_argument("--size", default="1.5b", help="a size of the family's preset, or tiny")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"])
    parser.add_argument("--max-shard-bytes", type=int, default=2 * 10**9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cfg = model_config(args.family, args.size)
    # HF tensors are unpadded; any padding will do
    cfg = dataclasses.replace(cfg, padded_vocab_size=cfg.padded_vocab(1))
    fmt, dtype = get_family(args.family).formats[0], TORCH_DTYPES[args.dtype]
    plan = [PlannedTensor(name, shape, dtype) for name, shape in expected_hf_tensors(cfg, name_map(fmt, cfg)).items()]
    out = Path(args.out)
    writer = SafetensorsWriter(out, plan, args.max_shard_bytes)
    generator = torch.Generator().manual_seed(args.seed)
    for t in plan:
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
        writer.write(t.name, (noise.mul_(0.1).add_(1) if "norm" in t.name else noise.mul_(0.02)).to(dtype))
    writer.close()
    (out / "config.json").write_text(json.dumps(source_config(fmt, cfg, dtype_name(dtype)), indent=2) + "\n")
    print(f"wrote {sum(t.nbytes for t in plan) / 1e9:.2f} GB in {len(writer.shards)} shards to {out}")


if __name__ == "__main__":
    main()
