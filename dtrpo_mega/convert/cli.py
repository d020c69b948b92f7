"""Hugging Face <-> megatron-core dist checkpoint conversion: `dtrpo convert` (tools/convert_checkpoint.py).

  dtrpo convert import --hf IN_DIR --out CKPT_DIR [--family auto|fast_dllm_v2|sdar|llada|dream|llama|qwen2|qwen3]
                       [--tp N] [--pp M] [--dtype auto|bf16|fp32|fp16]
                       [--dllm-family FAMILY] [--mask-token-id ID]
  dtrpo convert export --ckpt CKPT_DIR --out HF_DIR [--max-shard-size 5GB]
  dtrpo convert roundtrip --hf IN_DIR [--tp N] [--pp M] [import options] [--keep DIR]

--tp/--pp check the layout before any work and set the vocabulary padding (divisible by 128 x TP)
and the TP chunking of the stored tensors; the checkpoint loads at any layout that fits it.
`roundtrip` prints one row per tensor (name, shape, dtype, match) and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import sys

from dtrpo_mega.convert.formats import FORMATS
from dtrpo_mega.models.families import family_names


def _import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, help="Hugging Face checkpoint folder (config.json + *.safetensors)")
    parser.add_argument("--family", default="auto", choices=["auto", *FORMATS],
                        help="source format (auto: from config.json)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size to check and pad the vocabulary for")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to check")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"],
                        help="stored dtype (auto: the source's)")
    parser.add_argument("--dllm-family", choices=family_names(), help="dLLM family of a plain llama/qwen2/qwen3 source")
    parser.add_argument("--mask-token-id", type=int, help="mask token id when config.json has none (or to override it)")


def _options(args) -> dict:
    return dict(family=args.family, tp=args.tp, pp=args.pp, dtype=args.dtype, dllm_family=args.dllm_family,
                mask_token_id=args.mask_token_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="Hugging Face -> megatron dist checkpoint")
    _import_options(imp)
    imp.add_argument("--out", required=True, help="megatron checkpoint folder to create")
    exp = commands.add_parser("export", help="megatron dist checkpoint -> Hugging Face")
    exp.add_argument("--ckpt", required=True, help="megatron checkpoint folder (with dtrpo_model.json)")
    exp.add_argument("--out", required=True, help="Hugging Face folder to write")
    exp.add_argument("--max-shard-size", default="5GB", help="safetensors shard size cap (e.g. 5GB, 500MiB)")
    exp.add_argument("--no-verify", action="store_true", help="skip checking the files against checksums.json")
    rt = commands.add_parser("roundtrip", help="import, export, and compare every tensor bit for bit")
    _import_options(rt)
    rt.add_argument("--keep", help="folder to keep the intermediate checkpoints in (default: a temporary folder)")
    args = parser.parse_args(argv)

    from dtrpo_mega.convert import export_hf, import_hf, roundtrip

    try:
        if args.command == "import":
            import_hf(args.hf, args.out, **_options(args))
        elif args.command == "export":
            export_hf(args.ckpt, args.out, max_shard_size=args.max_shard_size, verify=not args.no_verify)
        else:
            rows, config_equal = roundtrip(args.hf, work_dir=args.keep, **_options(args))
            for row in rows:
                print(row)
            bad = sum(not r.match for r in rows) + (not config_equal)
            print(f"config.json {'match' if config_equal else 'MISMATCH'}")
            print(f"{len(rows)} tensors, {bad} mismatch(es)")
            return 1 if bad else 0
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
