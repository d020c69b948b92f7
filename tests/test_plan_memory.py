"""The memory planner against measurements: parameters exactly, saved activations within 15%.

Activations are measured with `SavedActivations` during the forward of real micro-batches
(`RowBuilder` rows of the dTRPO objective) on CPU, fp32 and bf16, `local` layers and attention,
dense and mixture-of-experts models (megatron-core's SequentialMLP experts). Also: total vs active
parameters and FLOPs of the MoE families. `pytest tests/test_plan_memory.py -s -k measured` prints
every comparison.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from conftest import REPO, run_torchrun
from dtrpo_mega.data import PreferencePair
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.trajectory import SchedulerConfig
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.diffusion.spec import ScoringLayout
from dtrpo_mega.models.families import model_config
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity, RecomputeMethod, checkpoint_spans
from dtrpo_mega.perf import memory as M
from dtrpo_mega.perf.activations import SavedActivations
from dtrpo_mega.perf.flops import dense_flops_per_token, parameter_counts
from dtrpo_mega.rows import RowBuilder
from dtrpo_mega.rows.samples import shared_prompt_length

SHAPES = {  # Qwen2 GQA with q/k/v bias; Qwen3 q/k norm, wider, tied; LLaMA-style MHA
    "fast_dllm_v2": ("fast_dllm_v2", {}),
    "sdar_wide": ("sdar", dict(hidden_size=96, ffn_hidden_size=160, num_attention_heads=6, num_query_groups=3,
                               tie_embeddings=True)),
    "llada_mha": ("llada", dict(num_query_groups=4)),
}
MOE_SHAPES = {  # LLaDA2: dense layer 0, sigmoid group routing, a shared expert; Qwen3-MoE: softmax, balancing loss
    "llada2": ("llada2", {}),
    "sdar_moe": ("sdar_moe", {}),
}
MODELS = {**SHAPES, **MOE_SHAPES}
RECOMPUTE = {
    "none": RecomputeConfig(),
    "selective": RecomputeConfig(RecomputeGranularity.SELECTIVE),
    "full": RecomputeConfig(RecomputeGranularity.FULL),
    "full_block2": RecomputeConfig(RecomputeGranularity.FULL, RecomputeMethod.BLOCK, 2),
}
LENGTHS = [(8, 16, 1), (13, 40, 2), (20, 96, 1)]  # prompt, response, pairs per micro-batch


def _model(name: str):
    family, overrides = MODELS[name]
    return model_config(family, "tiny", attention_backend="local", **overrides)


def _pairs(n: int, prompt: int, response: int) -> list[PreferencePair]:
    rng = np.random.default_rng(0)
    return [PreferencePair(i, rng.integers(0, 200, prompt), rng.integers(0, 200, response),
                           rng.integers(0, 200, response)) for i in range(n)]


def _rope_saved(s: M.Settings) -> bool:
    """The fp32 rotary tables (planned as the layout's cache) are also saved by autograd where rope
    runs outside a checkpoint."""
    g = s.recompute.granularity
    if s.bf16 or g == RecomputeGranularity.SELECTIVE:
        return False
    return g == RecomputeGranularity.NONE or not all(r for *_, r in checkpoint_spans(s.recompute, s.stage_layers))


def _compare(name: str, work: M.Workload, recompute: str, bf16: bool = False, share_prompt: bool = True) -> float:
    """Predicted over measured saved activations, the rows' prompt shared by default (`data.share_prompt`)."""
    cfg = _model(name)
    shared = int(shared_prompt_length(work.prompt_length, cfg.diffusion)) if share_prompt else 0
    work = dataclasses.replace(work, block_origin=cfg.diffusion.origin(work.prompt_length), shared_prompt=shared)
    s = M.Settings(cfg, bf16=bf16, backend="local", transformer_impl="local", recompute=RECOMPUTE[recompute])
    rows = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=1, pad_to_multiple=work.pad_to_multiple,
                      layout=ScoringLayout.ONE_PASS, share_prompt=share_prompt)
    pairs = _pairs(work.pairs_per_step, work.prompt_length, work.response_length)
    mb = (rows.packed_micro_batches(pairs, 0, work.packed_tokens)[0] if work.packed_tokens
          else rows.micro_batch(pairs, 0))
    shape = work.shape(cfg.block_size)
    assert tuple(mb.tokens.shape) == (shape.rows, shape.tokens)
    model = build_model(cfg, params_dtype=torch.bfloat16 if bf16 else torch.float32, transformer_impl="local",
                        recompute=s.recompute).train()
    with SavedActivations(model) as saved:
        model(mb.tokens, mb.layout, labels=mb.labels)
    predicted = sum(M.saved_bytes(s, shape).values()) + _rope_saved(s) * M.cache_bytes(s, shape)["rope"]
    ratio = predicted / saved.bytes
    print(f"\nmeasured {name} {'bf16' if bf16 else 'fp32'} rows {shape.rows}x{shape.tokens} (shared prompt {shared}) "
          f"recompute {recompute}: "
          f"measured {saved.bytes} predicted {predicted:.0f} ratio {ratio:.4f}")
    return ratio


@pytest.mark.parametrize("recompute", list(RECOMPUTE))
@pytest.mark.parametrize("prompt,response,pairs", LENGTHS)
@pytest.mark.parametrize("name", list(MODELS))
def test_measured_activations_fp32(world_of_one, name, prompt, response, pairs, recompute):
    work = M.Workload(prompt, response, pairs_per_micro_batch=pairs, pairs_per_step=pairs)
    assert abs(_compare(name, work, recompute) - 1) < 0.15


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("name", list(MODELS))
def test_measured_activations_of_rows_without_a_shared_prompt(world_of_one, name, recompute):
    work = M.Workload(20, 40, pairs_per_micro_batch=2, pairs_per_step=2)
    assert abs(_compare(name, work, recompute, share_prompt=False) - 1) < 0.15


def test_a_shared_prompt_is_planned_as_built(world_of_one):
    """Rows per pair, tokens per pair, and what the planner says of a config: the builder's rows."""
    from dtrpo_mega.config import load_config

    model = model_config("sdar")  # block 4: a 21-token prompt shares its first 20 positions
    for share, rows_per_pair in ((None, 1), (False, 2)):
        cfg = load_config(overrides=[f"data.share_prompt={'null' if share is None else 'false'}"])
        _, work = M.from_train_config(cfg, model, dp=1, prompt_length=21, response_length=30)
        assert work.shared_prompt == (20 if share is None else 0)
        mb = RowBuilder(model, cfg.scheduler, cfg.objective.name, seed=1, share_prompt=share,
                        pad_to_multiple=cfg.data.pad_to_multiple).micro_batch(_pairs(1, 21, 30), 0)
        assert tuple(mb.tokens.shape) == dataclasses.astuple(work.shape(model.block_size))
        assert mb.tokens.shape[0] == rows_per_pair
        assert mb.tokens.numel() - mb.padding_tokens() == work.pair_tokens(model.block_size)


@pytest.mark.parametrize("recompute", list(RECOMPUTE))
@pytest.mark.parametrize("name", ["fast_dllm_v2", "sdar_wide", "llada2"])
def test_measured_activations_bf16(world_of_one, name, recompute):
    work = M.Workload(13, 40, pairs_per_micro_batch=2, pairs_per_step=2)
    assert abs(_compare(name, work, recompute, bf16=True) - 1) < 0.15


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_measured_activations_packed(world_of_one, recompute):
    work = M.Workload(8, 16, packed_tokens=240, pairs_per_step=3)  # 3 pairs of 2 x 40 tokens fill one row
    assert abs(_compare("fast_dllm_v2", work, recompute) - 1) < 0.15


@pytest.mark.parametrize("name", list(SHAPES))
def test_parameters_exact(world_of_one, name):
    """TP=1 exactly; TP=2 and PP=2 from megatron's own partition attributes of the same model."""
    cfg = _model(name)
    model = build_model(cfg, transformer_impl="local")
    named = dict(model.named_parameters())
    assert sum(p.numel() for p in named.values()) == M.stage_parameters(cfg, 1, 1, 0)
    assert cfg.padded_vocab(1) == cfg.padded_vocab(2)
    tp2 = sum(p.numel() // (2 if getattr(p, "tensor_model_parallel", False) else 1) for p in named.values())
    assert tp2 == M.stage_parameters(cfg, 2, 1, 0)
    half = cfg.num_layers // 2
    layer = lambda n: int(n.split(".")[2]) if n.startswith("decoder.layers.") else None  # noqa: E731
    first = sum(p.numel() for n, p in named.items()
                if n.startswith("embedding.") or (layer(n) is not None and layer(n) < half))
    embedding = named["embedding.word_embeddings.weight"].numel()
    last = sum(p.numel() for n, p in named.items()
               if not n.startswith("embedding.") and (layer(n) is None or layer(n) >= half))
    assert first == M.stage_parameters(cfg, 1, 2, 0)
    assert last + cfg.tie_embeddings * embedding == M.stage_parameters(cfg, 1, 2, 1)  # tied: a copy on the last stage


@pytest.mark.parametrize("name", list(MOE_SHAPES))
def test_expert_parameters_exact(world_of_one, name):
    """TP=1 exactly; PP=2 (LLaDA2's dense layer 0 on stage 0) and EP=2 (half of each layer's routed
    experts) from the names of the same model's parameters."""
    cfg = _model(name)
    named = dict(build_model(cfg, transformer_impl="local").named_parameters())
    total = sum(p.numel() for p in named.values())
    assert total == M.stage_parameters(cfg, 1, 1, 0) == parameter_counts(cfg)[0]
    experts = sum(p.numel() for n, p in named.items() if ".mlp.experts." in n)
    assert experts == M.expert_parameters(cfg, 1, 0) > 0
    assert total - experts // 2 == M.stage_parameters(cfg, 1, 1, 0, ep=2)
    layer = lambda n: int(n.split(".")[2]) if n.startswith("decoder.layers.") else None  # noqa: E731
    stage0 = lambda n: n.startswith("embedding.") or (layer(n) is not None and layer(n) < cfg.num_layers // 2)  # noqa: E731
    for stage, mine in ((0, stage0), (1, lambda n: not stage0(n))):
        held = {n: p.numel() for n, p in named.items() if mine(n)}
        routed = sum(v for n, v in held.items() if ".mlp.experts." in n)
        assert routed == M.expert_parameters(cfg, 2, stage)
        assert sum(held.values()) - routed // 2 == M.stage_parameters(cfg, 1, 2, stage, ep=2)


def test_published_total_and_active_parameters():
    """LLaDA2.0-mini: "16B total, 1.4B active"; Qwen3-30B-A3B (SDAR-30B-A3B): 30.5B total, 3.3B active."""
    total, active = parameter_counts(model_config("llada2", "mini"))
    assert 15e9 < total < 17.5e9 and 1.2e9 < active < 1.7e9, (total, active)
    total, active = parameter_counts(model_config("sdar_moe", "30b_a3b"))
    assert 30e9 < total < 31e9 and 3.1e9 < active < 3.5e9, (total, active)
    dense = model_config("fast_dllm_v2", "7b")
    assert parameter_counts(dense) == (M.stage_parameters(dense, 1, 1, 0),) * 2


def test_moe_flops_count_the_active_experts_by_hand():
    """Tiny LLaDA2: h 64, 4 layers (layer 0 dense, f 128), 4 heads of 16, 2 KV groups, vocab 256;
    8 experts of 32, top-4, a shared expert of 32. Twice the active parameters but the embedding and the norms."""
    cfg = model_config("llada2")
    attention = 2 * 64 * 16 * (4 + 2 * 2) + 2 * 4 * 16 * 64
    dense, moe = 6 * 64 * 128, 4 * 6 * 64 * 32 + 6 * 64 * 32 + 2 * 64 * 8
    assert dense_flops_per_token(cfg) == 4 * attention + dense + 3 * moe + 2 * 64 * 256 == 367_616
    norms = 4 * (2 * 64 + 2 * 16) + 64
    assert dense_flops_per_token(cfg) == 2 * (parameter_counts(cfg)[1] - 256 * 64 - norms)


def test_parallel_layouts_measured():
    """TP=2, PP=2 (each stage) and CP=2 on 2 CPU ranks: parameters exactly, activations within 15%."""
    output = run_torchrun("plan_memory_layouts.py", 2)
    assert output.count("PLAN OK") == 3, output


@pytest.mark.slow
def test_expert_parallel_layouts_measured():
    """A tiny LLaDA2 at EP=2, x TP=2 (sequence parallel), x PP=2, x CP=2 on 4 CPU ranks: every rank's
    parameters exactly, activations summed over the ranks within 15%."""
    output = run_torchrun("plan_memory_layouts.py", 4, "moe")
    assert output.count("PLAN OK") == 4, output


def test_expert_state_shards_over_the_expert_data_parallel_group():
    """EP=8 of 8 GPUs: each rank's experts alone, their Adam state unsharded; the rest over DP=8."""
    cfg = model_config("llada2", "mini")
    s = M.Settings(cfg, M.ParallelLayout(dp=8, ep=8))
    memory = M.stage_memory(s, M.Workload(512, 1024), 0)
    experts = M.expert_parameters(cfg, 1, 0, ep=8)
    assert experts == 19 * 32 * 3 * 512 * 2048 and s.layout.expert_dp == 1
    assert memory.optimizer == 12 * ((memory.parameters - experts) / 8 + experts)
    tp2 = M.Settings(cfg, M.ParallelLayout(tp=2, dp=4, ep=4))
    assert tp2.sequence_shards == 2 and tp2.layout.expert_dp == 2
    with pytest.raises(ValueError, match="EP=3 does not divide num_experts=256"):
        M.Settings(cfg, M.ParallelLayout(dp=3, ep=3))
    with pytest.raises(ValueError, match="EP=4 x ETP=1 x PP=1 does not divide the world of 2 ranks"):
        M.Settings(cfg, M.ParallelLayout(dp=2, ep=4))


def _plan(**overrides):
    cfg = model_config("fast_dllm_v2", "7b")
    settings = M.Settings(cfg, M.ParallelLayout(tp=4, pp=2), **overrides)
    return settings, M.Workload(512, 1024, pairs_per_step=64)


@pytest.mark.parametrize("objective", ["dtrpo", "sft"])
def test_per_block_rows_are_planned_as_built(objective):
    """A full-attention family's per-block rows (its default scoring): the planner's shape is the builder's."""
    from dtrpo_mega.config import load_config

    cfg = load_config(overrides=["model.family=llada", f"objective.name={objective}", "train.global_batch_size=1"])
    model = model_config("llada")
    _, work = M.from_train_config(cfg, model, dp=1, prompt_length=6, response_length=20)
    rows = RowBuilder(model, cfg.scheduler, cfg.objective.name, seed=1,
                      pad_to_multiple=cfg.data.pad_to_multiple).micro_batch(_pairs(1, 6, 20), 0)
    assert work.plain and tuple(rows.tokens.shape) == dataclasses.astuple(work.shape(model.block_size))


def test_pipeline_in_flight_and_max_length():
    s, work = _plan()
    stages = M.plan(s, work)
    assert [m.in_flight for m in stages] == [2, 1]  # 1F1B: the first stage holds PP micro-batches
    assert M.plan(s, dataclasses.replace(work, pairs_per_step=1))[0].in_flight == 1
    capacity = 60 * 2**30
    best = M.max_response_length(s, work, capacity)
    assert M.peak(s, dataclasses.replace(work, response_length=best)).total <= capacity
    assert M.peak(s, dataclasses.replace(work, response_length=best + 1)).total > capacity
    full = dataclasses.replace(s, recompute=RECOMPUTE["full"])
    assert M.max_response_length(full, work, capacity) > best
    assert M.max_response_length(s, work, 1 * 2**30) is None  # the weights alone do not fit


def test_settings_errors():
    cfg = model_config("fast_dllm_v2", "7b")
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        M.Settings(cfg, backend="fast")
    with pytest.raises(ValueError, match="TP=3 does not divide num_attention_heads=28"):
        M.Settings(cfg, M.ParallelLayout(tp=3))
    with pytest.raises(ValueError, match="cp=0"):
        M.Settings(cfg, M.ParallelLayout(cp=0))
    with pytest.raises(ValueError, match="recompute_num_layers=20"):
        M.Settings(cfg, M.ParallelLayout(pp=2), recompute=RecomputeConfig(RecomputeGranularity.FULL, num_layers=20))


def _tool():
    spec = importlib.util.spec_from_file_location("plan_memory", REPO / "tools" / "plan_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIG = str(REPO / "examples" / "configs" / "fast_dllm_v2_7b.yaml")


def test_cli_prints_table(capsys):
    assert _tool().main(["--config", CONFIG, "--world-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "TP=4 PP=2 CP=1 DP=2" in out
    for label in ("weights", "gradients", "optimizer", "mask/bias", "activations", "total, GiB"):
        assert label in out
    lengths = next(line for line in out.splitlines() if line.startswith("max response")).split()[-3:]
    assert all(n.isdigit() and int(n) > 0 for n in lengths), out


def test_cli_packing(capsys):
    args = ["--config", CONFIG, "data.packing=true", "train.micro_batch_tokens=16384",
            "train.recompute_granularity=full"]
    assert _tool().main(args) == 0
    out = capsys.readouterr().out
    assert "packed rows of 16384 tokens" in out and "max micro_batch_tokens" in out


@pytest.mark.parametrize("args,message", [
    (["--world-size", "8", "--cp", "3"], "not divisible by TP=4 x PP=2 x CP=3"),
    (["--cp", "3", "data.packing=true", "train.micro_batch_tokens=8192"],
     "multiple of 2 x parallel.context_parallel_size=3"),
    (["--tp", "3"], "TP=3 does not divide"),
    (["model.overrides.attention_backend=fast"], "'fast' is not a valid AttentionBackend"),
    (["objective.name=exact_trajectory"], "one row per decoding step"),
])
def test_cli_bad_inputs(capsys, args, message):
    assert _tool().main(["--config", CONFIG, *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_moe_layout_and_search(capsys):
    """--ep, total and active parameters, and --search's table of TP x PP x EP layouts."""
    tool = _tool()
    assert tool.main(["--family", "llada2", "--size", "mini", "--world-size", "8", "--tp", "2", "--ep", "4"]) == 0
    out = capsys.readouterr().out
    assert "16.26 B parameters, 1.43 B active (256 experts, top-8, 19 MoE layers)" in out
    assert "TP=2 PP=1 CP=1 DP=4 EP=4 ETP=1 (sequence parallel)" in out and "experts / 2" in out
    assert tool.main(["--family", "llada2", "--world-size", "4", "--search", "--prompt-length", "8",
                      "--response-length", "16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:5] == ["TP", "PP", "DP", "EP", "EDP"]) + 1
    table = lines[start:lines.index("", start)]
    layouts = {tuple(map(int, line.split()[:5])) for line in table}
    # TP x PP x EP of 4 ranks with world % (EP x PP) == 0; TP=4 cannot split 2 KV groups
    assert len(layouts) == 11 and {(1, 1, 4, 4, 1), (2, 1, 2, 4, 1), (2, 2, 1, 2, 1), (1, 4, 1, 1, 1)} <= layouts
    assert all(line.endswith("none, selective, full") for line in table)
    assert "TP=4 PP=1 EP=2: parallel layout does not fit the model: TP=4 does not divide num_query_groups" in out


@pytest.mark.parametrize("args,message", [
    (["--family", "llada2", "--ep", "3", "--world-size", "3"], "EP=3 does not divide num_experts=8"),
    (["--family", "llada2", "--ep", "4", "--world-size", "2"], "EP=4 x ETP=1 x PP=1 does not divide the world"),
    (["--family", "sdar", "--ep", "2", "--world-size", "2"], "EP=2 needs a mixture-of-experts model"),
    (["--family", "llada2", "--search"], "--search needs --world-size"),
])
def test_cli_bad_moe_inputs(capsys, args, message):
    assert _tool().main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_backend_flag(capsys):
    with pytest.raises(SystemExit):
        _tool().main(["--config", CONFIG, "--backend", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
