"""The EP benchmark builds the MoE it names and tabulates the slowest rank (timings are not tested)."""

import argparse

from conftest import load_tool


def test_model_and_table():
    bench = load_tool("bench_moe")
    args = argparse.Namespace(family="sdar_moe", vocab=512, hidden=64, layers=2, heads=4, groups=2, block=4,
                              sub_block=4, backend="local", experts=8, expert_ffn=32, topk=2)
    cfg = bench.model_of(args)
    assert (cfg.moe.num_experts, cfg.moe.ffn_hidden_size, cfg.moe.topk, cfg.num_layers) == (8, 32, 2, 2)
    ranks = [dict(parameters_mib=3.0, expert_parameters_mib=2.0, activations_mib=10.0, peak_rss_mib=500.0,
                  step_s=s) for s in (1.0, 2.0)]
    lines = bench.table([{"ep": 2, "dp": 2, "tokens_per_s": 123.4, "ranks": ranks}]).splitlines()
    assert len(lines) == 2 and lines[1].split() == ["2", "2", "123", "3.0", "2.0", "10", "500", "2.00"]
