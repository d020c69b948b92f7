"""The family registry: each family complete and sourced in its own module, and nothing else needed."""

import subprocess
import sys

import pytest

from conftest import REPO
from dtrpo_mega.convert.formats import detect
from dtrpo_mega.diffusion.mask import MaskVariant
from dtrpo_mega.diffusion.spec import BlockAlignment, ScoringLayout
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.families import FAMILIES, family_names, get_family, model_config


@pytest.mark.parametrize("name", family_names())
def test_every_family_is_complete_and_sourced(name):
    family = get_family(name)
    assert family.sources and all(size.source for size in family.sizes.values())
    assert family.chat.end_of_turn in family.chat.special_tokens and family.chat.block_fill
    assert [f.family for f in family.formats] == [name]
    for size in ("tiny", *family.sizes):
        cfg = model_config(name, size)
        assert cfg.family == name and cfg.block_alignment == family.traits["block_alignment"]
    full_attention = family.traits["attention"] == MaskVariant.BIDIRECTIONAL
    # full-attention decoders start blocks at the prompt's end, see later blocks as [M] and run to the end
    assert (family.traits["block_alignment"] == BlockAlignment.PROMPT_END) == full_attention
    assert (family.scoring == ScoringLayout.PER_BLOCK) == full_attention == (not family.stops_at_end_of_turn)
    fmt = family.formats[0]
    assert detect({"architectures": list(fmt.architectures)})[0] is fmt


def test_published_facts():
    assert model_config("sdar", "4b").tie_embeddings is False  # SDAR-4B-Chat's config.json, unlike Qwen3-4B
    assert model_config("sdar", "1.7b").tie_embeddings is True
    assert get_family("fast_dllm_v2").chat.default_system == "You are a helpful assistant."
    assert get_family("llada").chat.bos == "<|startoftext|>"
    assert (get_family("sdar").chat.response_prefix == "<think>\n\n</think>\n\n"
            and get_family("sdar").chat.default_system is None)
    assert get_family("fast_dllm_v2").decoding.threshold == 0.9 and get_family("llada").decoding.tokens_per_step == 1


def test_published_moe_facts():
    mini = model_config("llada2", "mini")  # dFactory's llada2_mini config.json
    assert (mini.num_layers, mini.vocab_size, mini.rotary_dim, mini.mask_token_id) == (20, 157184, 64, 156895)
    assert (mini.moe.num_experts, mini.moe.topk, mini.moe.shared_expert_ffn_hidden_size, mini.moe.first_dense_layers,
            mini.moe.num_groups, mini.moe.group_topk, mini.moe.routed_scaling_factor) == (256, 8, 512, 1, 8, 4, 2.5)
    assert mini.moe.score_function == "sigmoid" and mini.moe.expert_bias and mini.block_size == 32
    big = model_config("sdar_moe", "30b_a3b")  # Qwen3-30B-A3B's config.json, SDAR's block of 4
    assert (big.num_layers, big.moe.num_experts, big.moe.topk, big.moe.ffn_hidden_size, big.block_size) == (
        48, 128, 8, 768, 4)
    assert big.moe.score_function == "softmax" and big.moe.normalize_topk and not big.moe.shared_expert_ffn_hidden_size
    assert get_family("llada2").chat.system_suffix == "detailed thinking off"


def test_a_stored_config_from_before_block_alignment_takes_its_familys():
    stored = model_config("llada").to_dict()
    del stored["block_alignment"]
    assert DLLMConfig.from_dict(stored).block_alignment == BlockAlignment.PROMPT_END


def test_chat_templates_need_no_megatron():
    """Preprocessing knows a family's chat template without importing megatron-core."""
    code = ("import sys; import dtrpo_mega.data.preprocess; from dtrpo_mega.models.families import chat_template; "
            "chat_template('llada'); "
            "assert not [m for m in sys.modules if m.startswith('megatron')], 'megatron imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_registry_is_the_only_way_in():
    assert set(FAMILIES) == {"fast_dllm_v2", "sdar", "llada", "dream", "llada2", "sdar_moe"}
    modules = r"models\.families\.\(fast_dllm_v2\|sdar\|llada\|dream\|llada2\|sdar_moe\)"
    out = subprocess.run(["git", "grep", "-l", modules, "--", "*.py"],
                         cwd=REPO, capture_output=True, text=True).stdout.split()
    assert out == [], f"family modules imported directly by {out}"
