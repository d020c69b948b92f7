"""A tiny synthetic preference task and its tokenizer, for the demo and the tests (no hub access).

The tokenizer's words also cover the sorting task of `dtrpo_mega.reproduce`.

Task: "count up from a :" -> "a a+1 ... a+L-1" (numbers mod 100). The chosen answer counts
correctly; the rejected one has a few numbers replaced, so preference is verifiable and
learnable by a tiny model. The tokenizer is a Hugging Face `tokenizer.json` (WordLevel) with the
family's chat markers as special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>",
                  "<|startoftext|>"]
WORDS = ["system", "user", "assistant", "count", "up", "from", ":", "<unk>"] + [str(i) for i in range(100)] + ["sort"]


def write_tokenizer(path: str | Path) -> Path:
    """A WordLevel tokenizer.json over the task's words and the chat markers."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def counting_pairs(num_pairs: int, length: int, errors: int, seed: int) -> list[dict]:
    """TRL-format preference records (plain strings)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(num_pairs):
        start = int(rng.integers(100))
        answer = [(start + i) % 100 for i in range(length)]
        wrong = list(answer)
        for pos in rng.choice(length, size=errors, replace=False):
            wrong[pos] = int((answer[pos] + rng.integers(1, 100)) % 100)
        records.append({
            "prompt": f"count up from {start} :",
            "chosen": " ".join(map(str, answer)),
            "rejected": " ".join(map(str, wrong)),
        })
    return records


def write_counting_jsonl(path: str | Path, num_pairs: int, length: int = 12, errors: int = 3, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in counting_pairs(num_pairs, length, errors, seed)))
    return path


def prepare_counting_dataset(prefix: str | Path, family: str = "fast_dllm_v2", num_pairs: int = 256, length: int = 12, errors: int = 3, seed: int = 0) -> str:
    """Tokenizer, JSONL and the preprocessed dataset at `prefix` (beside it), made once (again if it
    predates the metadata's `prompt_format`, which generation reads)."""
    from dtrpo_mega.data import build_preference_dataset

    prefix = Path(prefix)
    metadata = prefix.with_suffix(".json")
    if not metadata.exists() or "prompt_format" not in json.loads(metadata.read_text()):
        tokenizer = write_tokenizer(prefix.parent / "tokenizer.json")
        jsonl = write_counting_jsonl(prefix.parent / f"{prefix.name}.jsonl", num_pairs, length, errors, seed)
        build_preference_dataset(jsonl, tokenizer, family, prefix, max_length=64)
    return str(prefix)
