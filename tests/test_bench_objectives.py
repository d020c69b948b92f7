"""The benchmarks count what goes through the model and check their own consistency (timings are not tested)."""

import argparse
import importlib.util
import sys

from conftest import REPO, patient


def _bench():
    sys.path.insert(0, str(REPO / "tools"))  # for bench_common, as when the tool runs as a script
    spec = importlib.util.spec_from_file_location("bench_objectives", REPO / "tools" / "bench_objectives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_and_tokens_per_pair(world_of_one):
    bench = _bench()
    args = argparse.Namespace(family="fast_dllm_v2", vocab=300, hidden=32, layers=1, heads=2, groups=1, block=8,
                              sub_block=4, tokens_per_step=1, prompt=8, response=16, pairs=1, repeats=1, threads=1,
                              backend="local", bf16=False)
    got = {o: bench.run_one(o, args) for o in bench.OBJECTIVES}
    assert got["dpo_causal"]["rows_per_pair"] == 2 and got["dpo_causal"]["tokens_per_pair"] == 2 * (8 + 16)
    # dTRPO: one [z~ ; y0] row per sequence, the noisy half starting at the first response block.
    assert got["dtrpo"]["rows_per_pair"] == 2 and got["dtrpo"]["tokens_per_pair"] == 2 * (16 + 24)
    for n in (1, 4, 8):
        assert got[f"vrpo_{n}"]["rows_per_pair"] == 2 * n
    # Exact trajectory: one row per step index; a block of 8 with its own first token has 8 steps.
    assert got["exact_trajectory"]["rows_per_pair"] == 2 * 8
    assert all(r["ms_per_pair"] > 0 and r["peak_mib"] > 0 for r in got.values())


def test_decoding_benchmark_checks_the_cache_and_writes_json(world_of_one, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "decoding.json"
    cmd = [sys.executable, "tools/bench_decoding.py", "--vocab", "300", "--hidden", "64", "--layers", "1", "--block",
           "8", "--sub-block", "4", "--prompt", "5", "--new", "12", "--batch", "2", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=patient(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["new_tokens"], r["kv_cache"]) for r in rows] == [(12, False), (12, True)]
    assert rows[0]["model_calls"] == rows[1]["model_calls"] and all(r["tokens_per_s"] > 0 for r in rows)
