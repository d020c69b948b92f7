"""The scoring-bias benchmark: per_block is exact for full-attention families, one_pass is not."""

import importlib.util
import json

from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scoring_bias", REPO / "tools" / "bench_scoring_bias.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_per_block_is_unbiased_and_one_pass_is_not(world_of_one, tmp_path):
    out = tmp_path / "bias.json"
    payload = _bench().main(["--settings", "4:2:5:8", "--seeds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == payload["results"]
    assert [r["family"] for r in payload["results"]] == ["llada", "dream"]
    for r in payload["results"]:
        assert r["combos"] >= 4 and r["per_block"]["rows"] == 2 and r["one_pass"]["rows"] == 1
        assert r["per_block"]["max_abs_bias"] < 1e-9
        assert r["one_pass"]["mean_abs_bias"] > 1e-6
        assert r["one_pass"]["mean_std"] > 0 and r["per_block"]["mean_std"] > 0
