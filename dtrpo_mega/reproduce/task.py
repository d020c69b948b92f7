"""The reproduction's task: sort a list of numbers. The answer is verifiable (an exact match)
and a tiny model learns it partly in minutes, leaving room for preference training to help."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtrpo_mega.eval.tasks import Example, TaskKind


@dataclass(frozen=True)
class SortingTask:
    items: int = 6  # numbers per list
    max_value: int = 100  # numbers are 0 .. max_value - 1 (each one a tokenizer word)

    def prompt(self, numbers: list[int]) -> str:
        return "sort " + " ".join(map(str, numbers)) + " :"

    @staticmethod
    def answer(prompt: str) -> str:
        return " ".join(map(str, sorted(int(w) for w in prompt.split()[1:-1])))

    def problems(self, count: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[str]:
        """`count` distinct prompts, none of them in `exclude` (held-out prompts stay unseen)."""
        rng = np.random.default_rng(seed)
        out: dict[str, None] = {}
        while len(out) < count:
            prompt = self.prompt(rng.integers(self.max_value, size=self.items).tolist())
            if prompt not in exclude:
                out[prompt] = None
        return list(out)

    def is_correct(self, prompt: str, response: str) -> bool:
        return " ".join(response.split()) == self.answer(prompt)


def write_completions(path: Path, prompts: list[str]) -> Path:
    """TRL prompt-completion JSONL: the SFT data."""
    path.write_text("".join(json.dumps({"prompt": p, "completion": SortingTask.answer(p)}) + "\n" for p in prompts))
    return path


def write_examples(path: Path, prompts: list[str]) -> Path:
    """Evaluation JSONL (`kind: exact`), readable by tools/evaluate.py --tasks."""
    path.write_text("".join(json.dumps({"id": str(i), "prompt": p, "kind": "exact", "answer": SortingTask.answer(p)}) + "\n"
                            for i, p in enumerate(prompts)))
    return path


def examples(prompts: list[str]) -> list[Example]:
    return [Example(str(i), p, TaskKind.EXACT, SortingTask.answer(p)) for i, p in enumerate(prompts)]
