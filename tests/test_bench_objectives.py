"""The cost benchmark counts what each objective puts through the model (timings are not tested)."""

import argparse
import importlib.util

from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_objectives", REPO / "tools" / "bench_objectives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_and_tokens_per_pair(world_of_one):
    bench = _bench()
    args = argparse.Namespace(family="fast_dllm_v2", vocab=300, hidden=32, layers=1, heads=2, groups=1, block=8, sub_block=4,
                              tokens_per_step=1, prompt=8, response=16, pairs=1, repeats=1, threads=1, backend="local", bf16=False)
    got = {o: bench.run_one(o, args) for o in bench.OBJECTIVES}
    assert got["dpo_causal"]["rows_per_pair"] == 2 and got["dpo_causal"]["tokens_per_pair"] == 2 * (8 + 16)
    # dTRPO: one [z~ ; y0] row per sequence, the noisy half starting at the first response block.
    assert got["dtrpo"]["rows_per_pair"] == 2 and got["dtrpo"]["tokens_per_pair"] == 2 * (16 + 24)
    for n in (1, 4, 8):
        assert got[f"vrpo_{n}"]["rows_per_pair"] == 2 * n
    # Exact trajectory: one row per step index; a block of 8 with its own first token has 8 steps.
    assert got["exact_trajectory"]["rows_per_pair"] == 2 * 8
    assert all(r["ms_per_pair"] > 0 and r["peak_mib"] > 0 for r in got.values())
