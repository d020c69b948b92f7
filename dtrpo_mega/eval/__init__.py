"""Evaluation: exact-match answers, sandboxed pass@1 for code, and result reports.

Model loading and decoding options live in `dtrpo_mega.generation.model` and `dtrpo_mega.eval.cli`
(imported on demand: they pull in megatron-core)."""

from dtrpo_mega.eval.answers import canonical_number, extract_choice, extract_number
from dtrpo_mega.eval.executor import ExecResult, Limits, run_code
from dtrpo_mega.eval.report import Outcome, TaskResult, table, write_json
from dtrpo_mega.eval.runner import Responder, run_task
from dtrpo_mega.eval.tasks import Example, Score, TaskKind, program, read_examples, score

__all__ = ["ExecResult", "Example", "Limits", "Outcome", "Responder", "Score", "TaskKind", "TaskResult",
           "canonical_number", "extract_choice", "extract_number", "program", "read_examples", "run_code", "run_task",
           "score", "table", "write_json"]
