"""Evaluation results: per-task accuracy (pass@1 for code), a console table, and JSON on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    id: str
    response: str
    extracted: str | None
    correct: bool


@dataclass
class TaskResult:
    task: str
    kind: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(o.correct for o in self.outcomes) / max(len(self.outcomes), 1)

    @property
    def metric(self) -> str:
        return {"code": "pass@1", "preference": "pairwise_accuracy"}.get(self.kind, "exact_match")


def table(results: list[TaskResult]) -> str:
    rows = [("task", "kind", "metric", "n", "score")]
    rows += [(r.task, r.kind, r.metric, str(len(r.outcomes)), f"{r.accuracy:.4f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def write_json(path: str | Path, results: list[TaskResult], meta: dict) -> None:
    summary = {r.task: {"kind": r.kind, "metric": r.metric, "n": len(r.outcomes), "score": r.accuracy} for r in results}
    details = {r.task: [asdict(o) for o in r.outcomes] for r in results}
    Path(path).write_text(json.dumps({"meta": meta, "summary": summary, "examples": details}, indent=2) + "\n")
