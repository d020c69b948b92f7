"""`make demo`'s job end to end (shorter): data prepared, dTRPO trained at TP=2 x PP=2, outputs written."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_demo_trains_with_dtrpo_and_rewards_separate(tmp_path):
    overrides = [f"data.path={tmp_path}/data/counting", f"logging.dir={tmp_path}/run", f"checkpoint.dir={tmp_path}/run/ckpt",
                 "train.train_steps=100", "logging.log_interval=50"]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), *overrides], cwd=REPO, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "summary over 100 steps" in output
    start, end = map(float, re.search(r"rewards/margins\s+(\S+)\s+(\S+)", output).groups())
    acc_start, acc_end = map(float, re.search(r"rewards/accuracies\s+(\S+)\s+(\S+)", output).groups())
    assert end > start + 0.03 and acc_end > acc_start, output[-2000:]  # separating (the full 200 steps: margin 0.06 -> 1.5)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 101))
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "grad_norm", "lr", "scored_tokens", "pairs_per_s", "tokens_per_s"} <= set(records[0])
    assert (tmp_path / "run" / "rewards.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "iter_0000100"
