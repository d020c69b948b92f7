"""Answer extraction on tricky strings; the code sandbox's time limit and write confinement; reports."""

import json
import time

import pytest

from dtrpo_mega.eval import (
    Example, Limits, Outcome, TaskKind, TaskResult, extract_choice, extract_number, read_examples, run_code, run_task, score,
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
    assert score(exact, " 3 5\n12 ").correct and not score(exact, "3 5 12 12").correct and not score(exact, "35 12").correct


def test_executor_kills_an_infinite_loop_in_time():
    start = time.monotonic()
    result = run_code("while True:\n    pass\n", Limits(wall_seconds=1.5, cpu_seconds=30))
    assert result.timed_out and not result.passed and time.monotonic() - start < 5


def test_executor_cpu_limit_and_success():
    assert run_code("print('ok')").stdout == "ok\n"
    burn = run_code("x = 0\nwhile True:\n    x += 1\n", Limits(wall_seconds=20, cpu_seconds=1))
    assert not burn.passed and not burn.timed_out  # killed by RLIMIT_CPU, not the wall clock


@pytest.mark.parametrize("attempt", [
    "open({p!r}, 'w').write('x')",
    "import os; os.close(os.open({p!r}, os.O_WRONLY | os.O_CREAT))",
    "import pathlib; pathlib.Path({p!r}).write_text('x')",
    "import subprocess; subprocess.run(['touch', {p!r}])",
    "import os; os.system('touch ' + {p!r})",
    "import shutil; shutil.copyfile(__file__, {p!r})",
    "import os; os.symlink('/tmp', {p!r})",
])
def test_executor_cannot_write_outside_its_folder(tmp_path, attempt):
    target = tmp_path / "escaped.txt"
    result = run_code(attempt.format(p=str(target)))
    assert not target.exists() and not target.is_symlink()
    assert not result.passed and "sandbox" in result.stderr


def test_executor_may_write_inside_its_folder():
    code = "import os, tempfile\nopen('a.txt', 'w').write('x')\nos.rename('a.txt', 'b.txt')\n" \
           "tempfile.NamedTemporaryFile(delete=False).write(b'y')\nprint(open('b.txt').read())"
    result = run_code(code)
    assert result.passed, result.stderr
    assert result.stdout == "x\n"


def test_read_examples_and_report(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "kind": "numeric", "answer": "4"}) + "\n\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "f?"}], "kind": "code", "tests": "assert True"}) + "\n")
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
