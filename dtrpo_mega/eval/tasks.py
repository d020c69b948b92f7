"""Evaluation examples from local JSONL and how a response is scored against one.

One JSON object per line: `prompt` (text, or a list of `{"role", "content"}` messages), `kind`
(`numeric`, `choice`, `exact` or `code`), and
- numeric / choice / exact: `answer` (a number; a letter; the whole expected response, compared
  with runs of whitespace collapsed), choice optionally `choices` (default "ABCD");
- code: `tests` (Python run after the program; an exception or non-zero exit fails it) and
  optionally `prefix` (code placed before the response, e.g. a function signature).
Optional `id`; blank lines are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dtrpo_mega.data.records import Message, Prompt
from dtrpo_mega.eval.answers import canonical_number, extract_choice, extract_number
from dtrpo_mega.eval.executor import Limits, run_code

FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


class TaskKind(str, Enum):
    NUMERIC = "numeric"
    CHOICE = "choice"
    EXACT = "exact"
    CODE = "code"


@dataclass(frozen=True)
class Example:
    id: str
    prompt: Prompt
    kind: TaskKind
    answer: str = ""
    choices: str = "ABCD"
    tests: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: str | None  # the answer read from the response (code: "pass" / "fail" / "timeout")


def read_examples(path: str | Path) -> list[Example]:
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
            kind = TaskKind(obj["kind"])
            prompt = obj["prompt"]
            if not isinstance(prompt, str):
                prompt = tuple(Message(m["role"], m["content"]) for m in prompt)
            example = Example(str(obj.get("id", number)), prompt, kind, str(obj.get("answer", "")),
                              obj.get("choices", "ABCD"), obj.get("tests", ""), obj.get("prefix", ""))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not an evaluation example ({type(err).__name__}: {err})") from None
        if kind == TaskKind.CODE and not example.tests:
            raise ValueError(f"{where}: a code example needs 'tests'")
        if kind != TaskKind.CODE and not example.answer:
            raise ValueError(f"{where}: a {kind.value} example needs 'answer'")
        examples.append(example)
    return examples


def program(example: Example, response: str) -> str:
    """The script a code response is judged by: prefix, the response's code, then the tests."""
    fenced = FENCE.findall(response)
    code = fenced[0] if fenced else response
    return f"{example.prefix}{code}\n\n{example.tests}\n"


def score(example: Example, response: str, limits: Limits = Limits()) -> Score:
    if example.kind == TaskKind.NUMERIC:
        got = extract_number(response)
        return Score(got is not None and got == canonical_number(example.answer), got)
    if example.kind == TaskKind.CHOICE:
        got = extract_choice(response, example.choices)
        return Score(got == example.answer.strip().upper(), got)
    if example.kind == TaskKind.EXACT:
        got = " ".join(response.split())
        return Score(got == " ".join(example.answer.split()), got)
    result = run_code(program(example, response), limits)
    return Score(result.passed, "timeout" if result.timed_out else ("pass" if result.passed else "fail"))
