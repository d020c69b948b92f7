"""`make demo` end to end, at its default settings: SFT copies the annotator's slip, dTRPO at TP=2 x PP=2 on
4 CPU ranks fixes it, held-out accuracy and generations before and after, TRL metrics and the reward PNG."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, patient


@pytest.mark.slow
def test_demo_shows_dtrpo_raising_held_out_accuracy(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), f"demo.out={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=patient(900))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    before, after = map(int,
                        re.search(r"held-out accuracy .*: (\d+)% after SFT -> (\d+)% after dTRPO", output).groups())
    assert after >= before + 50, output[-3000:]  # measured: 14% -> 100% (README)
    summary = json.loads((out / "summary.json").read_text())
    shown = summary["after"]["shown"]
    assert shown["reverse 4 8 15 16 23 :"] == "23 16 15 8 4", shown
    assert "summary over 100 steps" in output and "Traceback" not in output
    start, end = map(float, re.search(r"rewards/margins\s+(\S+)\s+(\S+)", output).groups())
    assert end > start + 0.5, output[-2000:]
    records = [json.loads(line) for line in (out / "dtrpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 101))
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "grad_norm", "lr", "scored_tokens", "pairs_per_s", "tokens_per_s"} <= set(records[0])
    assert (out / "dtrpo" / "rewards.png").stat().st_size > 10_000
    assert (out / "dtrpo" / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "iter_0000100"
    # every megatron / torch warning is folded away: what the demo prints is its own
    assert "Warning" not in output, [line for line in output.splitlines() if "Warning" in line]
