"""Tiny verifiable tasks and their tokenizer, for the demo, the reproduction and the tests (no hub access).

- Reversing: "reverse x1 ... xk :" -> the numbers last first (the demo's task);
- Sorting: "sort x1 ... xk :" -> the numbers in ascending order (the reproduction's task);
- `counting_pairs`: "count up from a :" -> "a a+1 ... a+L-1" (mod 100), a correct and a corrupted
  answer (the tests' preference data).

Both answers are checkable, so preference pairs can be judged by the task itself. The tokenizer is a
Hugging Face `tokenizer.json` (WordLevel) over both tasks' words, with every family's chat markers as
special tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|begin_of_text|>", "<|startoftext|>"]
WORDS = (["system", "user", "assistant", "count", "up", "from", ":", "<unk>"] + [str(i) for i in range(100)]
         + ["sort", "reverse"])
LATER_SPECIAL_TOKENS = ["<|role_end|>"]  # after the words, so that the ids above stay as they were (LLaDA2's)
NUMBERS = 100  # the tokenizer's numbers are 0 .. 99


def write_tokenizer(path: str | Path) -> Path:
    """A WordLevel tokenizer.json over the tasks' words and the chat markers."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS + LATER_SPECIAL_TOKENS)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in SPECIAL_TOKENS + LATER_SPECIAL_TOKENS])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def _distinct(count: int, draw, exclude: frozenset[str], space: int) -> list[str]:
    if count > space - len(exclude):
        raise ValueError(f"{count} distinct prompts asked for, but only {space - len(exclude)} exist outside the "
                         f"{len(exclude)} excluded")
    out: dict[str, None] = {}
    while len(out) < count:
        prompt = draw()
        if prompt not in exclude:
            out[prompt] = None
    return list(out)


def _same_words(response: str, answer: str) -> bool:
    return " ".join(response.split()) == answer


@dataclass(frozen=True)
class ListTask:
    """A list of numbers in, the same numbers rearranged out: "sort x1 ... xk :" or "reverse x1 ... xk :"."""

    verb: str = "sort"  # "sort": ascending order; "reverse": the last number first
    items: int = 6  # numbers per list
    max_value: int = NUMBERS  # numbers are 0 .. max_value - 1 (each one a tokenizer word)

    def prompt(self, numbers: list[int]) -> str:
        return f"{self.verb} " + " ".join(map(str, numbers)) + " :"

    def answer(self, prompt: str) -> str:
        numbers = [int(w) for w in prompt.split()[1:-1]]
        return " ".join(map(str, sorted(numbers) if self.verb == "sort" else numbers[::-1]))

    def problems(self, count: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[str]:
        """`count` distinct prompts, none of them in `exclude` (held-out prompts stay unseen)."""
        rng = np.random.default_rng(seed)
        return _distinct(count, lambda: self.prompt(rng.integers(self.max_value, size=self.items).tolist()), exclude,
                         self.max_value ** self.items)

    def is_correct(self, prompt: str, response: str) -> bool:
        return _same_words(response, self.answer(prompt))


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_completions(path: str | Path, task, prompts: list[str], answers: list[str] | None = None) -> Path:
    """TRL prompt-completion JSONL (SFT data): the task's answers, or `answers` given."""
    answers = answers or [task.answer(p) for p in prompts]
    return write_jsonl(path, [{"prompt": p, "completion": a} for p, a in zip(prompts, answers, strict=True)])


def write_examples(path: str | Path, task, prompts: list[str]) -> Path:
    """Evaluation JSONL (`kind: exact`), readable by `dtrpo evaluate --tasks`."""
    return write_jsonl(path, [{"id": str(i), "prompt": p, "kind": "exact", "answer": task.answer(p)}
                              for i, p in enumerate(prompts)])


def counting_pairs(num_pairs: int, length: int, errors: int, seed: int) -> list[dict]:
    """TRL-format preference records: chosen counts correctly, rejected has `errors` numbers replaced."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(num_pairs):
        start = int(rng.integers(NUMBERS))
        prompt, answer = f"count up from {start} :", [(start + i) % NUMBERS for i in range(length)]
        wrong = list(answer)
        for pos in rng.choice(length, size=errors, replace=False):
            wrong[pos] = int((answer[pos] + rng.integers(1, NUMBERS)) % NUMBERS)
        records.append({"prompt": prompt, "chosen": " ".join(map(str, answer)), "rejected": " ".join(map(str, wrong))})
    return records


def prepare_counting_dataset(prefix: str | Path, family: str = "fast_dllm_v2", num_pairs: int = 256, length: int = 12,
                             errors: int = 3, seed: int = 0) -> str:
    """Tokenizer, JSONL and the preprocessed preference dataset at `prefix` (beside it), made once (again if it
    predates the metadata's `prompt_format`, which generation reads)."""
    from dtrpo_mega.data import build_preference_dataset

    prefix = Path(prefix)
    metadata = prefix.with_suffix(".json")
    if not metadata.exists() or "prompt_format" not in json.loads(metadata.read_text()):
        tokenizer = write_tokenizer(prefix.parent / "tokenizer.json")
        jsonl = write_jsonl(prefix.parent / f"{prefix.name}.jsonl", counting_pairs(num_pairs, length, errors, seed))
        build_preference_dataset(jsonl, tokenizer, family, prefix, max_length=64)
    return str(prefix)
