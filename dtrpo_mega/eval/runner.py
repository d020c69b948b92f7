"""Run one task: answer its examples in batches with any responder, and score the answers."""

from __future__ import annotations

from collections.abc import Callable

from dtrpo_mega.data.records import Prompt
from dtrpo_mega.eval.executor import Limits
from dtrpo_mega.eval.report import Outcome, TaskResult
from dtrpo_mega.eval.tasks import Example, score

Responder = Callable[[list[Prompt]], list[str]]  # prompts -> response texts


def run_task(name: str, examples: list[Example], respond: Responder, batch_size: int, limits: Limits = Limits()) -> TaskResult:
    """One response per example (greedy or sampled): exact match, or pass@1 for code."""
    kinds = {e.kind.value for e in examples}
    result = TaskResult(name, kinds.pop() if len(kinds) == 1 else "mixed")
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        for example, response in zip(batch, respond([e.prompt for e in batch]), strict=True):
            s = score(example, response, limits)
            result.outcomes.append(Outcome(example.id, response, s.extracted, s.correct))
    return result
