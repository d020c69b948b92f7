"""Tokenize TRL-format preference or prompt-completion JSONL into the memory-mapped dataset that training reads.

  python tools/preprocess_data.py --input pairs.jsonl --tokenizer TOKENIZER --family fast_dllm_v2 \
      --output data/pairs --max-length 2048 [--overlong truncate|drop] [--block-size N]

TOKENIZER: a SentencePiece `.model` file, a Hugging Face `tokenizer.json`, or a model folder
holding one. Writes OUTPUT.bin, OUTPUT.idx.npy, OUTPUT.json (and OUTPUT.steps.bin for data with
logged reveal steps), then prints the counts and the data fingerprint. Set `data.path=OUTPUT`
in the training config. Bad input (a missing or unreadable file, a malformed line, bad settings)
prints one `error: ...` line naming the file (and line) and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys


from dtrpo_mega.data import Overlong, PreferenceDataset, build_preference_dataset  # noqa: E402
from dtrpo_mega.models.families import family_names  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="preference or prompt-completion records, one JSON object per line")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model, tokenizer.json, or a folder holding one")
    parser.add_argument("--family", required=True, choices=family_names(), help="model family (chat template)")
    parser.add_argument("--output", required=True, help="output prefix")
    parser.add_argument("--max-length", type=int, required=True, help="max tokens of prompt + longer response")
    parser.add_argument("--overlong", default=Overlong.TRUNCATE.value, choices=[o.value for o in Overlong],
                        help="what to do with examples over --max-length (default: truncate the responses)")
    parser.add_argument("--block-size", type=int, help="block size recorded for the trainer (default: the family's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        counts = build_preference_dataset(args.input, args.tokenizer, args.family, args.output, args.max_length,
                                          args.overlong, args.block_size)
    except (ValueError, OSError) as err:  # bad input (file:line named), a missing or unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 2
    dataset = PreferenceDataset.open(args.output)
    print(" ".join(f"{name}={value}" for name, value in counts.items()))
    print(f"wrote {args.output}: {len(dataset)} {dataset.kind} examples, {dataset.metadata['num_tokens']} tokens, fingerprint {dataset.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
