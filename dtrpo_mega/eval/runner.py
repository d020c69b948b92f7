"""Run one task: answer its examples in batches with any responder, and score the answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dtrpo_mega.data.records import Prompt
from dtrpo_mega.eval.executor import Limits
from dtrpo_mega.eval.report import Outcome, TaskResult
from dtrpo_mega.eval.tasks import Example, score

if TYPE_CHECKING:  # decoding pulls in megatron-core; evaluation's own modules do not
    import torch

    from dtrpo_mega.generation.model import PromptRenderer
    from dtrpo_mega.generation.sampler import Sampler

Responder = Callable[[list[Prompt]], list[str]]  # prompts -> response texts


def run_task(name: str, examples: list[Example], respond: Responder, batch_size: int,
             limits: Limits = Limits()) -> TaskResult:
    """One response per example (greedy or sampled): exact match, or pass@1 for code."""
    kinds = {e.kind.value for e in examples}
    result = TaskResult(name, kinds.pop() if len(kinds) == 1 else "mixed")
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        for example, response in zip(batch, respond([e.prompt for e in batch]), strict=True):
            s = score(example, response, limits)
            result.outcomes.append(Outcome(example.id, response, s.extracted, s.correct))
    return result


class SamplerResponder:
    """A Responder that decodes with a Sampler, summing its decoding statistics."""

    def __init__(self, sampler: Sampler, renderer: PromptRenderer, generator: torch.Generator | None = None):
        self.sampler, self.renderer, self.generator = sampler, renderer, generator
        self.totals = {"new_tokens": 0, "forward_passes": 0, "seconds": 0.0}

    def __call__(self, prompts: list[Prompt]) -> list[str]:
        generations, stats = self.sampler.generate([self.renderer.ids(p) for p in prompts], self.generator)
        for key in self.totals:
            self.totals[key] += getattr(stats, key)
        return [self.renderer.text(g.tokens) for g in generations]

    @property
    def tokens_per_forward(self) -> float:
        return self.totals["new_tokens"] / max(self.totals["forward_passes"], 1)

    @property
    def tokens_per_second(self) -> float:
        return self.totals["new_tokens"] / max(self.totals["seconds"], 1e-9)
