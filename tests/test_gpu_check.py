"""The CPU side of the one-call GPU check: FLOP counting, the peak table, gpu_throughput's
arguments and its tiny CPU path, attention_cost, and gpu_check.sh's syntax."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtrpo_mega.diffusion.mask import MaskVariant, block_diffusion_sample, collate
from dtrpo_mega.models.families import model_config
from dtrpo_mega.perf.flops import (allowed_pairs, attention_flops_per_pair, dense_flops_per_token, peak_bf16_flops,
                                   tile_counts, training_step_flops)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import attention_cost  # noqa: E402
import gpu_throughput  # noqa: E402


def test_dense_and_attention_flops_by_hand():
    cfg = model_config("fast_dllm_v2")  # h 64, f 128, 4 layers, 4 heads of 16, 2 KV groups, vocab 250 -> 256
    qkv, out, mlp = 2 * 64 * 16 * (4 + 2 * 2), 2 * 4 * 16 * 64, 2 * 64 * 2 * 128 + 2 * 128 * 64
    assert dense_flops_per_token(cfg) == 4 * (qkv + out + mlp) + 2 * 64 * 256 == 327_680
    assert attention_flops_per_pair(cfg) == 4 * 4 * 16 * 4 == 1024


def test_allowed_pairs_by_hand_padding_excluded():
    """Blocks of 2. n=4: noisy blocks see themselves + earlier clean (2+0, 2+2 keys per query),
    clean blocks see clean blocks up to theirs (2, 4): 2*(2+4) + 2*(2+4) = 24. n=6: 48.
    The n=4 row (8 tokens) is padded to 12; padding queries count nothing."""
    t = torch.arange(6)
    samples = [block_diffusion_sample(t[:4], t[:4], 0, 2), block_diffusion_sample(t, t, 0, 2)]
    _, layout = collate(samples, MaskVariant.BLOCK_DIFFUSION, 2, pad_id=0)
    assert allowed_pairs(layout) == 24 + 48
    counts = tile_counts(layout, tile=4, rows=8)
    assert counts.shape == (2, 3, 3) and counts.sum() == 72
    dense = layout.allowed()[:, 0] & (layout.segments != 0)[:, :, None]
    torch.testing.assert_close(counts, dense.view(2, 3, 4, 3, 4).sum((2, 4)))
    cfg = model_config("fast_dllm_v2")
    assert training_step_flops(cfg, 20, 72) == 3 * (20 * 327_680 + 72 * 1024)


@pytest.mark.parametrize(
    "name,tflops",
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H200", 989.4), ("NVIDIA H100 PCIe", 756.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA H100 NVL", None),
     ("NVIDIA L4", None)],
)
def test_peak_flops_table(name, tflops):
    assert peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_throughput_arguments():
    args = gpu_throughput.parse_args(["--dry-run"])
    assert (args.device, args.size, args.dtype, args.backends) == ("cpu", "tiny", "fp32", ["local"])
    args = gpu_throughput.parse_args(["--device", "cpu"])
    assert (args.size, args.backends, args.lengths, args.recompute) == ("1.5b", ["te", "flex"], [4096, 8192],
                                                                        ["off", "on"])
    for bad in (["--device", "cpu", "--steps", "0"], ["--device", "cpu", "--lengths", "500"],
                ["--device", "cpu", "--lengths", "4097"], ["--backends", "xla"]):
        with pytest.raises(SystemExit):
            gpu_throughput.parse_args(bad)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_throughput.parse_args([])


def test_throughput_dry_run_writes_json_and_docs(tmp_path):
    docs = tmp_path / "gpu.md"
    docs.write_text(f"# GPU\n\nbefore\n{gpu_throughput.BEGIN}\nold table\n{gpu_throughput.END}\nafter\n")
    results = gpu_throughput.main(["--dry-run", "--recompute", "off", "on", "--out", str(tmp_path / "t.json"), "--docs",
                                   str(docs), "--note", "tests: fine"])
    assert [(r.status, r.steps, r.recompute) for r in results] == [("ok", 2, False), ("ok", 2, True)]
    layout = gpu_throughput.row(model_config("fast_dllm_v2"), 192, 32, "cpu")[1]
    assert layout.seq_len == 192
    assert results[0].model_flops_per_step == 3 * (192 * 327_680 + allowed_pairs(layout) * 1024)
    assert results[0].tokens_per_s > 0 and results[0].mfu is None and results[0].peak_memory_gib is None
    text = docs.read_text()
    assert ("old table" not in text and text.startswith("# GPU\n\nbefore\n")
            and text.endswith(f"{gpu_throughput.END}\nafter\n"))
    assert "| local | 192 | full |" in text and "tests: fine" in text
    with pytest.raises(ValueError, match="markers"):
        gpu_throughput.write_between_markers(tmp_path / "t.json", "x")


def test_time_limit_stops_a_case():
    with pytest.raises(gpu_throughput.CaseTimeout):
        with gpu_throughput.time_limit(0.05):
            while True:
                pass


def test_attention_cost_flex_computes_only_nonempty_tiles(tmp_path):
    rows = attention_cost.main(["--lengths", "1024", "--out", str(tmp_path / "cost.json")])
    (r,) = rows
    assert r["tiles"] == 64 and 0 < r["tiles_nonempty"] < 64
    assert r["useful"]["fwd_flops"] <= r["flex"]["fwd_flops"] < r["te"]["fwd_flops"]
    assert r["flex"]["bwd_flops"] == 2.5 * r["flex"]["fwd_flops"]
    assert r["flex"]["bwd_bytes"] < r["te"]["bwd_bytes"] and (tmp_path / "cost.json").is_file()


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "tools" / "gpu_check.sh")], check=True)
