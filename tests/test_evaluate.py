"""Answer extraction on tricky strings, scoring and reports (the code sandbox: tests/test_sandbox.py)."""

import json

import pytest

from dtrpo_mega.eval import (
    Example, Outcome, TaskKind, TaskResult, extract_choice, extract_number, read_examples, run_task, score,
    table, write_json,
)


@pytest.mark.parametrize("text,expected", [
    ("She pays 3 + 4 = 7 dollars.\n#### 7", "7"),
    ("#### 1,234", "1234"),
    ("so the total is $1,000,000.", "1000000"),
    ("The answer is \\boxed{-12}. Check: 5 + 3", "-12"),
    ("\\boxed{\\frac{1}{2}} no; final \\boxed{3.50}", "3.5"),
    ("temperature drops to -4.25 degrees", "-4.25"),
    ("10-3 = 7", "7"),
    ("from 5-3 we get 2", "2"),
    ("#### 42\nsome trailing 99 text", "42"),
    ("It costs .5 dollars", "0.5"),
    ("18.0", "18"),
    ("no digits here", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The answer is (C).", "C"),
    ("A is wrong, B is wrong, so the answer: D", "D"),
    ("I think B", "B"),
    ("Answer: a", "A"),
    ("(A) cats (B) dogs -- Answer is B, not A", "B"),
    ("Neither works", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_score_numeric_choice_and_code():
    numeric = Example("1", "q", TaskKind.NUMERIC, answer="1,000")
    assert score(numeric, "so #### 1000.00").correct and not score(numeric, "#### 100").correct
    assert score(Example("2", "q", TaskKind.CHOICE, answer="b"), "The answer is (B)").correct
    code = Example("3", "q", TaskKind.CODE, tests="assert add(2, 3) == 5", prefix="def add(a, b):\n")
    assert score(code, "```python\n    return a + b\n```").correct
    assert not score(code, "    return a - b").correct
    exact = Example("4", "q", TaskKind.EXACT, answer="3 5  12")
    assert (score(exact, " 3 5\n12 ").correct and not score(exact, "3 5 12 12").correct
            and not score(exact, "35 12").correct)


def test_read_examples_and_report(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "kind": "numeric", "answer": "4"}) + "\n\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "f?"}], "kind": "code",
                                  "tests": "assert True"}) + "\n")
    examples = read_examples(path)
    assert [e.kind for e in examples] == [TaskKind.NUMERIC, TaskKind.CODE] and examples[1].prompt[0].content == "f?"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "kind": "code"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: a code example needs 'tests'"):
        read_examples(tmp_path / "bad.jsonl")
    result = TaskResult("gsm", "numeric", [Outcome("1", "#### 4", "4", True), Outcome("2", "5", "5", False)])
    assert "0.5000" in table([result])
    write_json(tmp_path / "out.json", [result], {"checkpoint": "c"})
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["summary"]["gsm"] == {"kind": "numeric", "metric": "exact_match", "n": 2, "score": 0.5}


def test_run_task_batches_and_scores():
    examples = [Example(str(i), f"what is {i}+1?", TaskKind.NUMERIC, answer=str(i + 1)) for i in range(5)]
    seen = []

    def respond(prompts):
        seen.append(len(prompts))
        return [f"#### {int(p.split()[2].split('+')[0]) + (1 if len(seen) == 1 else 2)}" for p in prompts]

    result = run_task("add", examples, respond, batch_size=2)
    assert seen == [2, 2, 1] and [o.correct for o in result.outcomes] == [True, True, False, False, False]
    assert result.accuracy == 0.4 and result.kind == "numeric" and result.outcomes[0].extracted == "1"
