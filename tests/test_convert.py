"""Checkpoint conversion: bit-exact HF -> megatron -> HF at every TP/PP layout, logits parity with
transformers, the dLLM families' own formats, and the error messages.

The sources are tiny randomly initialized transformers models (every weight random, norms too, so
a swapped or mis-ordered tensor changes the result): Llama with 4 query groups of 2 heads,
untied; Qwen2 with q/k/v biases, tied; Qwen3 with q/k norms and head_dim != hidden/heads,
untied; Qwen3-MoE (8 experts, top 2, renormalized), untied. Vocabularies of 250 and 301 are not
multiples of 128, so padding is always exercised.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, run_torchrun
from dtrpo_mega.checkpoint.model import global_shapes, load_model, read_model_config, save_model, sharded_weights
from dtrpo_mega.convert import compare_folders, export_hf, import_hf, roundtrip
from dtrpo_mega.convert.dist_io import stored_tensors
from dtrpo_mega.convert.mapping import QKV, GatedMLP, VocabRows
from dtrpo_mega.convert.megatron_layout import storage_chunks, stream_groups
from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config

TINY = {
    "llama": dict(vocab_size=250, num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2": dict(vocab_size=250, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": dict(vocab_size=301, num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
    "qwen3_moe": dict(vocab_size=250, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      norm_topk_prob=True),
}
# import layout; the checkpoint is then loaded at every layout
IMPORT_TP = {"llama": 1, "qwen2": 2, "qwen3": 1, "qwen3_moe": 2}
quiet = dict(log=lambda *_: None)


def _make_hf(kind: str, path, seed: int):
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
    }[kind]
    config = config_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=64,
                        **TINY[kind])
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    tokens = torch.randint(0, config.vocab_size, (2, 11))
    with torch.no_grad():
        logits = model(tokens).logits
    return {"tokens": tokens, "logits": logits}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """kind -> (HF folder, reference tokens and transformers logits)."""
    root = tmp_path_factory.mktemp("hf")
    return {kind: (root / kind, _make_hf(kind, root / kind, seed)) for seed, kind in enumerate(TINY)}


def _mask_id(kind):
    return TINY[kind]["vocab_size"] - 1


def _causal_logits(model, tokens):
    cfg = model.dllm_config
    _, layout = collate([plain_sample(t) for t in tokens], MaskVariant.CAUSAL, cfg.block_size, pad_id=0)
    with torch.no_grad():
        return model(tokens, layout)[..., : cfg.vocab_size]


def _all_match(rows, config_equal, n_expected):
    bad = [str(r) for r in rows if not r.match]
    assert not bad and config_equal, "\n".join(bad) or "config.json differs"
    assert len(rows) == n_expected


# --- the mapping itself ------------------------------------------------------------------------


def test_qkv_interleaves_per_query_group_and_inverts():
    cfg = model_config("sdar", num_attention_heads=4, num_query_groups=2, head_dim=2, hidden_size=3)
    head = lambda i: torch.full((2, 3), float(i))  # noqa: E731  # both rows of head i hold i
    q, k, v = torch.cat([head(i) for i in range(4)]), torch.cat([head(10), head(11)]), torch.cat([head(20), head(21)])
    qkv = QKV("qkv", ()).to_megatron([q, k, v], cfg)
    assert qkv[::2, 0].tolist() == [0, 1, 10, 20, 2, 3, 11, 21]  # [q heads of group; k; v] per group
    assert all(torch.equal(a, b) for a, b in zip(QKV("qkv", ()).to_hf(qkv, cfg), (q, k, v)))
    bias = QKV("qkv", ()).to_megatron([q[:, 0], k[:, 0], v[:, 0]], cfg)
    assert bias[::2].tolist() == [0, 1, 10, 20, 2, 3, 11, 21]


def test_gated_mlp_and_vocab_rows_invert():
    cfg = dataclasses.replace(model_config("llada"), padded_vocab_size=256)
    gate, up = torch.randn(128, 64), torch.randn(128, 64)
    fc1 = GatedMLP("fc1", ()).to_megatron([gate, up], cfg)
    assert torch.equal(fc1, torch.cat([gate, up]))
    assert all(torch.equal(a, b) for a, b in zip(GatedMLP("fc1", ()).to_hf(fc1, cfg), (gate, up)))
    embed = torch.randn(250, 64)
    padded = VocabRows("e", ()).to_megatron([embed], cfg)
    assert padded.shape == (256, 64) and torch.equal(padded[:250], embed) and not padded[250:].any()
    assert torch.equal(VocabRows("e", ()).to_hf(padded, cfg)[0], embed)


@pytest.mark.parametrize("family, tie", [("sdar", True), ("sdar", False), ("llada2", False), ("sdar_moe", True)])
def test_layout_table_matches_megatron_core(world_of_one, family, tie):
    """The importer's tensor table has megatron-core's own keys and global shapes (per layer, with
    an expert axis, for mixtures of experts)."""
    cfg = model_config(family, qkv_bias=family == "sdar", tie_embeddings=tie)
    padded = dataclasses.replace(cfg, padded_vocab_size=256)
    ours = {item.key: item.tensor.global_shape(cfg.num_layers) for group in stream_groups(padded) for item in group}
    assert ours == global_shapes(sharded_weights(build_model(cfg)))
    fc1 = [c.offsets for c in storage_chunks(padded, tp=2) if c.layer == 1 and c.tensor.name.endswith("fc1.weight")
           and (c.tensor.experts > 0 if cfg.moe else True)]
    if cfg.moe is None:  # layer 1 of the stacked [layer, ...] tensor: [gate_0], [gate_1], [up_0], [up_1]
        assert fc1 == [(1, 0, 0), (1, 64, 0), (1, 128, 0), (1, 192, 0)]
    else:  # every expert of layer 1 whole (expert TP 1) as [gate], [up] in its own key's expert axis
        ffn = cfg.moe.ffn_hidden_size
        assert fc1 == [offsets for e in range(cfg.moe.num_experts) for offsets in ((e, 0, 0), (e, ffn, 0))]


# --- round trips and logits --------------------------------------------------------------------


@pytest.mark.parametrize("tp", [1, 2])
def test_roundtrip_is_bit_exact(sources, tmp_path, tp):
    for kind, (hf_dir, _) in sources.items():
        rows, config_equal = roundtrip(hf_dir, tmp_path / f"{kind}{tp}", tp=tp, mask_token_id=_mask_id(kind), **quiet)
        _all_match(rows, config_equal, len(load_file(hf_dir / "model.safetensors")))


@pytest.mark.parametrize("kind", list(TINY))
def test_imported_model_matches_transformers_logits(world_of_one, sources, tmp_path, kind):
    hf_dir, reference = sources[kind]
    cfg = import_hf(hf_dir, tmp_path / "ckpt", mask_token_id=_mask_id(kind), **quiet)
    assert cfg.padded_vocab_size == {"llama": 256, "qwen2": 256, "qwen3": 384, "qwen3_moe": 256}[kind]
    model = build_model(cfg).eval()
    load_model(model, tmp_path / "ckpt")
    torch.testing.assert_close(_causal_logits(model, reference["tokens"]), reference["logits"], rtol=1e-5, atol=1e-5)


def test_sharded_folders_with_an_index_are_written_and_read(sources, tmp_path):
    hf_dir, _ = sources["qwen3"]
    import_hf(hf_dir, tmp_path / "ckpt", mask_token_id=300, **quiet)
    sharded = export_hf(tmp_path / "ckpt", tmp_path / "sharded", max_shard_size="40KB", **quiet)
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 3 and not (sharded / "model.safetensors").exists()
    _all_match(*compare_folders(hf_dir, sharded), len(weight_map))
    _all_match(*roundtrip(sharded, tmp_path / "rt", mask_token_id=300, **quiet), len(weight_map))


@pytest.mark.slow
def test_every_layout_loads_matches_logits_and_roundtrips(sources, tmp_path):
    """Import, then on 4 ranks load at TP1/PP1, TP2/PP1, TP1/PP2, TP2/PP2 (logits checked at PP=1),
    each with EP2 for the MoE model, save with megatron-core's writer, export each layout and compare
    with the source bit for bit."""
    for kind, (hf_dir, reference) in sources.items():
        import_hf(hf_dir, tmp_path / kind / "megatron", tp=IMPORT_TP[kind], mask_token_id=_mask_id(kind), **quiet)
        torch.save(reference, tmp_path / kind / "reference.pt")
    output = run_torchrun("convert_layouts.py", 4, str(tmp_path), *sources)
    for kind, (hf_dir, _) in sources.items():
        for tp, pp in [(1, 1), (2, 1), (1, 2), (2, 2)]:
            assert f"LAYOUT OK {kind} TP={tp} PP={pp}" in output, output[-3000:]
            out = export_hf(tmp_path / kind / f"tp{tp}pp{pp}", tmp_path / kind / f"hf{tp}{pp}", **quiet)
            _all_match(*compare_folders(hf_dir, out), len(load_file(hf_dir / "model.safetensors")))


# --- the dLLM families' own formats ------------------------------------------------------------

LLADA_NAMES = {
    "model.embed_tokens.weight": "model.transformer.wte.weight", "model.norm.weight": "model.transformer.ln_f.weight",
    "lm_head.weight": "model.transformer.ff_out.weight", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ff_norm", "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj",
    "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out", "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj", "model.layers.": "model.transformer.blocks.",
}


def _as_llada(hf_dir, out, mask_id):
    """The Llama source re-saved with LLaDA's parameter names and config.json fields."""
    tensors = load_file(hf_dir / "model.safetensors")
    renamed = {}
    for name, tensor in tensors.items():
        for old, new in LLADA_NAMES.items():
            name = name.replace(old, new)
        renamed[name] = tensor
    out.mkdir()
    save_file(renamed, out / "model.safetensors", metadata={"format": "pt"})
    c = json.loads((hf_dir / "config.json").read_text())
    config = dict(
        architectures=["LLaDAModelLM"], model_type="llada", auto_map={"AutoModel": "modeling_llada.LLaDAModelLM"},
        d_model=c["hidden_size"], n_heads=c["num_attention_heads"], n_kv_heads=c["num_key_value_heads"],
        n_layers=c["num_hidden_layers"], mlp_hidden_size=c["intermediate_size"], mlp_ratio=4,
        vocab_size=c["vocab_size"], embedding_size=c["vocab_size"], rope_theta=c["rope_parameters"]["rope_theta"],
        rms_norm_eps=c["rms_norm_eps"], weight_tying=False, mask_token_id=mask_id, block_type="llama",
        layer_norm_type="rms", activation_type="silu", rope=True, alibi=False, include_bias=False,
        include_qkv_bias=False, attention_layer_norm=False, block_group_size=1, scale_logits=False,
        max_sequence_length=64,
    )
    (out / "config.json").write_text(json.dumps(config))


def _relabelled(hf_dir, out, **fields):
    """A copy of a source whose config.json names another architecture."""
    shutil.copytree(hf_dir, out)
    config = {**json.loads((hf_dir / "config.json").read_text()), **fields}
    (out / "config.json").write_text(json.dumps(config))


DLLM_SOURCES = {  # format: (base source, fields, expected (block_size, logits_shift, attention))
    "fast_dllm_v2": ("qwen2", dict(architectures=["Fast_dLLM_QwenForCausalLM"], model_type="Fast_dLLM_Qwen", bd_size=8),
                     (8, True, MaskVariant.BLOCK_DIFFUSION)),
    "sdar": ("qwen3", dict(architectures=["SDARForCausalLM"], model_type="sdar", block_size=4, mask_token_id=300),
             (4, False, MaskVariant.BLOCK_DIFFUSION)),
    "dream": ("qwen2", dict(architectures=["DreamModel"], model_type="Dream", mask_token_id=249),
              (32, True, MaskVariant.BIDIRECTIONAL)),
    "llada": ("llama", None, (32, False, MaskVariant.BIDIRECTIONAL)),
    "sdar_moe": ("qwen3_moe", dict(architectures=["SDARMoeForCausalLM"], model_type="sdar_moe", block_size=4,
                                   mask_token_id=249), (4, False, MaskVariant.BLOCK_DIFFUSION)),
}


@pytest.mark.parametrize("fmt", list(DLLM_SOURCES))
def test_dllm_formats_roundtrip_and_load_into_their_family(world_of_one, sources, tmp_path, fmt):
    base, fields, (block, shift, attention) = DLLM_SOURCES[fmt]
    hf_dir, reference = sources[base]
    src = tmp_path / "src"
    if fmt == "llada":
        _as_llada(hf_dir, src, mask_id=_mask_id(base))
    else:
        _relabelled(hf_dir, src, **fields)
    (src / f"modeling_{fmt}.py").write_text("raise RuntimeError('remote code must never run')\n")
    (src / "tokenizer.json").write_text("{}")
    # Fast-dLLM v2's mask token lives in its tokenizer, not in config.json.
    mask = {"mask_token_id": _mask_id(base)} if fmt == "fast_dllm_v2" else {}
    if mask:
        with pytest.raises(ValueError, match="mask token id 151665 is outside the vocabulary of 250.*--mask-token-id"):
            import_hf(src, tmp_path / "refused", **quiet)

    messages = []
    cfg = import_hf(src, tmp_path / "ckpt", log=messages.append, **mask)
    assert f"detected source format '{fmt}'" in messages[0]
    assert (cfg.family, cfg.block_size, cfg.logits_shift, cfg.attention, cfg.mask_token_id) == (
        fmt, block, shift, attention, _mask_id(base))
    out = export_hf(tmp_path / "ckpt", tmp_path / "out", **quiet)
    _all_match(*compare_folders(src, out), len(load_file(src / "model.safetensors")))
    assert (out / f"modeling_{fmt}.py").read_text() == (src / f"modeling_{fmt}.py").read_text()
    assert (out / "tokenizer.json").exists()

    model = build_model(read_model_config(tmp_path / "ckpt")).eval()
    load_model(model, tmp_path / "ckpt")
    torch.testing.assert_close(_causal_logits(model, reference["tokens"]), reference["logits"], rtol=1e-5, atol=1e-5)


def test_saved_rotary_buffers_and_tied_head_roundtrip(sources, tmp_path):
    """Older checkpoints save `rotary_emb.inv_freq` per layer, and some tied ones their head too."""
    hf_dir, _ = sources["qwen2"]
    src = tmp_path / "src"
    _relabelled(hf_dir, src)
    tensors = load_file(src / "model.safetensors")
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    extra = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq.clone() for i in range(2)}
    save_file({**tensors, **extra, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()},
              src / "model.safetensors")
    rows, config_equal = roundtrip(src, tmp_path / "rt", mask_token_id=249, **quiet)
    _all_match(rows, config_equal, len(tensors) + 3)

    save_file({**tensors, **{n: v * 0.5 for n, v in extra.items()}}, src / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.rotary_emb.inv_freq \(8,\) is not the plain rope"):
        import_hf(src, tmp_path / "scaled", mask_token_id=249, **quiet)


def test_source_dtypes_are_kept_per_tensor(sources, tmp_path):
    """bf16 weights with fp32 norms are stored as fp32 (exact for both) and exported in each
    tensor's own dtype; storing an fp32 source as bf16 is lossy, and the round trip says so."""
    hf_dir, _ = sources["qwen2"]
    src = tmp_path / "src"
    _relabelled(hf_dir, src)
    tensors = {n: t if "norm" in n else t.to(torch.bfloat16) for n, t in load_file(src / "model.safetensors").items()}
    save_file(tensors, src / "model.safetensors")
    _all_match(*roundtrip(src, tmp_path / "mixed", mask_token_id=249, **quiet), len(tensors))
    assert read_model_config(tmp_path / "mixed" / "megatron").extra["source"]["dtype"] == "bfloat16"
    assert stored_tensors(tmp_path / "mixed" / "megatron")["embedding.word_embeddings.weight"][1] == torch.float32
    rows, _ = roundtrip(hf_dir, tmp_path / "lossy", mask_token_id=249, dtype="bf16", **quiet)
    assert len(rows) == len(tensors) and not any(r.match for r in rows)


def test_checkpoint_born_in_training_exports_to_transformers(world_of_one, tmp_path):
    """No source recorded: export writes a plain Qwen3 config that transformers loads and that
    reproduces the model's logits."""
    import transformers

    torch.manual_seed(0)
    model = build_model(model_config("sdar", num_layers=2)).eval()
    save_model(model, tmp_path / "ckpt")
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf", **quiet)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "Qwen3ForCausalLM"
    tokens = torch.randint(0, 250, (2, 9))
    with torch.no_grad():
        expected = hf_model(tokens).logits
    torch.testing.assert_close(_causal_logits(model, tokens), expected, rtol=1e-5, atol=1e-5)


def test_roundtrip_detects_a_single_flipped_bit(sources, tmp_path):
    hf_dir, _ = sources["llama"]
    changed = tmp_path / "changed"
    _relabelled(hf_dir, changed)
    tensors = load_file(changed / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"].view(torch.int32)[3, 5] ^= 1
    save_file(tensors, changed / "model.safetensors")
    rows, config_equal = compare_folders(hf_dir, changed)
    assert [r.name for r in rows if not r.match] == ["model.layers.1.mlp.up_proj.weight"] and config_equal


# --- clear errors ------------------------------------------------------------------------------


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    message = r"unknown architecture \['GPT2LMHeadModel'\].*llada \(LLaDAModelLM\).*qwen3 \(Qwen3ForCausalLM\)"
    with pytest.raises(ValueError, match=message):
        import_hf(tmp_path, tmp_path / "out", **quiet)


def test_missing_and_mismatched_tensors_name_the_tensor_and_shapes(sources, tmp_path):
    hf_dir, _ = sources["llama"]
    src = tmp_path / "src"
    _relabelled(hf_dir, src, intermediate_size=96)
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(ValueError) as error:
        import_hf(src, tmp_path / "out", mask_token_id=249, **quiet)
    message = str(error.value)
    assert "tensor model.layers.1.self_attn.k_proj.weight is missing (expected shape (32, 64))" in message
    assert ("tensor model.layers.0.mlp.gate_proj.weight: checkpoint shape (128, 64), config.json implies (96, 64)"
            in message)
    assert "tensor model.layers.0.self_attn.o_proj.bias (64,) is not used by the llama mapping" in message
    assert not (tmp_path / "out").exists()


def test_loading_into_a_different_model_names_tensor_and_shapes(world_of_one, sources, tmp_path):
    hf_dir, _ = sources["qwen2"]
    cfg = import_hf(hf_dir, tmp_path / "ckpt", mask_token_id=249, **quiet)
    other = build_model(dataclasses.replace(cfg, ffn_hidden_size=96))
    message = (r"tensor decoder.layers.mlp.linear_fc1.weight: checkpoint shape \(2, 256, 64\), "
               r"model shape \(2, 192, 64\)")
    with pytest.raises(ValueError, match=message):
        load_model(other, tmp_path / "ckpt")


@pytest.mark.parametrize("kind,tp,message", [
    ("qwen2", 3, "TP=3 does not divide num_attention_heads=4"),
    ("llama", 8, r"TP=8 does not divide num_query_groups \(KV heads\)=4"),
])
def test_tp_that_does_not_divide_heads_or_groups_fails_before_any_work(sources, tmp_path, kind, tp, message):
    hf_dir, _ = sources[kind]
    with pytest.raises(ValueError, match=message):
        import_hf(hf_dir, tmp_path / "out", tp=tp, mask_token_id=_mask_id(kind), **quiet)
    assert not (tmp_path / "out").exists()


def test_plain_sources_need_a_mask_token(sources, tmp_path):
    with pytest.raises(ValueError, match="a plain qwen3 checkpoint has no mask token: pass --mask-token-id"):
        import_hf(sources["qwen3"][0], tmp_path / "out", **quiet)


def test_unsupported_features_are_refused(sources, tmp_path):
    hf_dir, _ = sources["llama"]
    _relabelled(hf_dir, tmp_path / "src", rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0})
    with pytest.raises(ValueError, match="rope type 'llama3' \\(only plain rope\\)"):
        import_hf(tmp_path / "src", tmp_path / "out", **quiet)


def test_command_line(sources, tmp_path):
    hf_dir, _ = sources["qwen2"]
    tool = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py")]
    ok = subprocess.run([*tool, "roundtrip", "--hf", str(hf_dir), "--tp", "2", "--mask-token-id", "249"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "model.layers.0.self_attn.q_proj.bias" in ok.stdout and "26 tensors, 0 mismatch(es)" in ok.stdout
    refused = subprocess.run([*tool, "import", "--hf", str(hf_dir), "--out", str(tmp_path / "o"), "--tp", "3",
                              "--mask-token-id", "249"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "TP=3 does not divide num_attention_heads=4" in refused.stderr


@pytest.mark.parametrize("family", ["fast_dllm_v2", "sdar", "llada", "dream", "llada2", "sdar_moe"])
def test_random_checkpoint_tool_writes_each_familys_own_format(world_of_one, tmp_path, family):
    """tools/make_random_hf_checkpoint.py: the family's preset in its own config.json and weight names."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_random", REPO / "tools" / "make_random_hf_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--out", str(tmp_path / "hf"), "--family", family, "--size", "tiny", "--dtype", "fp32"])
    cfg = import_hf(tmp_path / "hf", tmp_path / "megatron", log=lambda *_: None)
    expected = model_config(family, "tiny")
    assert cfg.family == family
    for name in ("vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads",
                 "num_query_groups", "head_dim", "qkv_bias", "qk_norm", "tie_embeddings", "mask_token_id", "attention",
                 "block_alignment", "logits_shift", "rotary_fraction", "moe"):
        assert getattr(cfg, name) == getattr(expected, name), name
    if cfg.moe is not None:  # experts streamed one at a time; bit-exact back, at TP2 too
        from dtrpo_mega.convert.hf_io import HFCheckpoint

        rows = roundtrip(tmp_path / "hf", tmp_path / "rt", tp=2, **quiet)
        _all_match(*rows, len(HFCheckpoint(tmp_path / "hf").tensors))
