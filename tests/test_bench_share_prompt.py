"""The shared-prompt benchmark compares the same pairs and counts what sharing leaves out (timings are not tested)."""

from conftest import load_tool


def test_shared_rows_drop_exactly_the_repeated_prompt_blocks(world_of_one):
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config
    from dtrpo_mega.rows.samples import shared_prompt_length

    bench, common = load_tool("bench_share_prompt"), load_tool("bench_common")
    cfg = model_config("fast_dllm_v2", vocab_size=300, hidden_size=32, ffn_hidden_size=64, num_layers=1,
                       num_attention_heads=2, num_query_groups=1, block_size=4, sub_block_size=2,
                       attention_backend="local")
    pairs = common.preference_like_pairs(6, 299, scale=0.1, seed=0, prompt_median=260)
    variants, budget = bench.build_variants(cfg, pairs, micro_batch_size=2, row_tokens=0)
    assert list(variants) == [("unpacked", False), ("unpacked", True), ("packed", False), ("packed", True)]
    assert all(mb.tokens.shape[1] <= budget for key in [("packed", False), ("packed", True)] for mb in variants[key])

    # dTRPO scores two samples per pair (chosen, rejected): sharing leaves out one copy of the shared prompt.
    left_out = sum(int(shared_prompt_length(len(p.prompt), cfg.diffusion)) for p in pairs)
    assert left_out > 0
    real = {key: sum(mb.tokens.numel() - mb.padding_tokens() for mb in micro) for key, micro in variants.items()}
    for packing in ("unpacked", "packed"):
        assert real[packing, False] - real[packing, True] == left_out
        assert sum(mb.num_samples() for mb in variants[packing, True]) == 2 * len(pairs)

    policy, reference = build_model(cfg), build_model(cfg).eval()
    separate, shared = (bench.measure(cfg, policy, reference, variants["packed", s], repeats=1) for s in (False, True))
    assert separate["real_tokens"] == real["packed", False] and shared["real_tokens"] == real["packed", True]
    x = bench.ratios(separate, shared)
    assert x["real_tokens"] > 1 and x["attention_pairs"] > 1 and x["model_tflops"] > 1 and x["saved_mib"] > 1
    assert shared["step_s"] > 0
    lines = bench.table([{"mix": "equal", "packing": "packed", "share_prompt": False, **separate},
                         {"mix": "equal", "packing": "packed", "share_prompt": True, **shared,
                          "separate_over_shared": x}]).splitlines()
    assert len(lines) == 3 and "shared" in lines[2] and f"{x['real_tokens']:.2f}" in lines[2]
