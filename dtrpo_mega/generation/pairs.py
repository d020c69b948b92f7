"""Preference pairs from a model's own samples, judged by a checker (a task whose answers are verifiable).

Each prompt is answered `samples_per_prompt` times; a correct and an incorrect answer make a pair
(chosen, rejected) in TRL's format, with the reveal step of every token and the decoded tail of the
last block, so that dTRPO (`scheduler.mode=logged`) scores the very trajectories that produced them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dtrpo_mega.generation.model import PromptRenderer
from dtrpo_mega.generation.sampler import Sampler

Checker = Callable[[str, str], bool]  # (prompt, response text) -> correct


@dataclass
class SampledPairs:
    records: list[dict] = field(default_factory=list)
    samples: int = 0
    correct: int = 0

    @property
    def sample_accuracy(self) -> float:
        return self.correct / max(self.samples, 1)


def sample_pairs(sampler: Sampler, renderer: PromptRenderer, prompts: list[str], is_correct: Checker,
                 samples_per_prompt: int, pairs_per_prompt: int, batch_size: int,
                 generator: torch.Generator | None = None) -> SampledPairs:
    """Up to `pairs_per_prompt` (correct, incorrect) pairs per prompt, distinct texts only.

    A sample joins a pair only if it ended (end-of-turn) and its text tokenizes back to the sampled ids,
    so that the recorded steps line up with the tokens the trainer will score."""
    out = SampledPairs()
    per_batch = max(batch_size // samples_per_prompt, 1)
    for start in range(0, len(prompts), per_batch):
        batch = prompts[start : start + per_batch]
        ids = [renderer.ids(p) for p in batch for _ in range(samples_per_prompt)]
        generations, _ = sampler.generate(ids, generator)
        for i, prompt in enumerate(batch):
            good, bad = {}, {}
            for gen in generations[i * samples_per_prompt : (i + 1) * samples_per_prompt]:
                text = renderer.text(gen.tokens)
                ok = is_correct(prompt, text)
                out.samples, out.correct = out.samples + 1, out.correct + ok
                if gen.ended and text.strip() and renderer.encoder.response(text, False) == gen.tokens:
                    (good if ok else bad).setdefault(text, (gen.reveal_steps, gen.tail))
            for (chosen, (c_steps, c_tail)), (rejected, (r_steps, r_tail)) in itertools.islice(
                    itertools.product(good.items(), bad.items()), pairs_per_prompt):
                out.records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                                    "chosen_steps": c_steps, "rejected_steps": r_steps,
                                    "chosen_tail": c_tail, "rejected_tail": r_tail})
    return out
