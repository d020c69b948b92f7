"""The reproduction pipeline end to end at a reduced size: SFT, self-sampled pairs, every method,
held-out accuracy, the report and its plot; then a rerun that resumes from the kept stages."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, patient
from dtrpo_mega.data.synthetic import ListTask

sys.path.insert(0, str(REPO / "examples" / "reproduce_small"))  # the reproduction is an example, not the library
from pipeline import SeedRun, load_repro_config  # noqa: E402
from results import RESULTS_BEGIN  # noqa: E402

REDUCED = [
    "task.items=2", "task.max_value=10", "sft_examples=64", "sft.steps=60", "sft.global_batch_size=32",
    "sft.micro_batch_size=32", "sft.warmup_steps=5", "sample_prompts=40", "temperature=1.0", "held_out_prompts=16",
    "preference.steps=2", "preference.global_batch_size=4", "preference.micro_batch_size=2",
    "preference.warmup_steps=0", "batch_size=32",
]
STAGES = ["sft", "pairs", "dtrpo", "vrpo", "exact_trajectory", "mean_field"]


def _run(out, report):
    cmd = [sys.executable, "examples/reproduce_small/run.py", "--seeds", "0", "1", "--jobs", "2", "--out", str(out),
           "--report", str(report), *REDUCED]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=patient(600),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_reproduction_runs_end_to_end_and_resumes(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "results.md"
    _run(out, report)
    for seed in (0, 1):
        result = json.loads((out / f"seed{seed}" / "result.json").read_text())
        methods = result["methods"]
        assert set(methods) == set(STAGES[2:])
        assert methods["dtrpo"]["forward_passes_per_pair"] == methods["mean_field"]["forward_passes_per_pair"] == 4.0
        assert methods["vrpo"]["forward_passes_per_pair"] == 4.0 * 8
        assert methods["exact_trajectory"]["forward_passes_per_pair"] > 4.0
        assert all(0.0 <= m["accuracy"] <= 1.0 and m["train_seconds"] > 0 for m in methods.values())
        pairs = [json.loads(line) for line in (out / f"seed{seed}" / "pairs.jsonl").read_text().splitlines()]
        assert len(pairs) == result["pairs"]["pairs"] >= 4
        # chosen verified correct, rejected incorrect, a reveal step per token, end-of-turn and decoded tail
        for p in pairs:
            assert ListTask().answer(p["prompt"]) == p["chosen"] != p["rejected"]
            for role in ("chosen", "rejected"):
                assert len(p[f"{role}_steps"]) == len(p[role].split()) + 1 + len(p[f"{role}_tail"])
    text = report.read_text()
    for label in ("| dTRPO |", "| VRPO (n=8) |", "| exact trajectory |", "| DPO, mean-field likelihood |"):
        assert label in text
    assert (tmp_path / "results.png").stat().st_size > 0

    kept = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*.json") if p.stem in STAGES}
    report.write_text("# Notes by hand\n\n" + text + "\nMore notes.\n")
    _run(out, report)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished stage ran again"
    rerun = report.read_text()
    assert rerun.startswith("# Notes by hand") and rerun.endswith("More notes.\n") and rerun.count(RESULTS_BEGIN) == 1


def test_kept_stages_are_reused_only_by_their_config(tmp_path):
    SeedRun(load_repro_config(None, ["held_out_prompts=8"]), 0, tmp_path)
    SeedRun(load_repro_config(None, ["held_out_prompts=8"]), 0, tmp_path)
    with pytest.raises(ValueError,
                       match=r"seed0 holds stages made with another config \(beta, held_out_prompts differ\)"):
        SeedRun(load_repro_config(None, ["held_out_prompts=9", "beta=0.2"]), 0, tmp_path)
