"""Model families, vocabulary padding, rope, and one-pass block attention vs block-by-block decoding."""

import pytest
import torch

from dtrpo_mega.diffusion.mask import MaskVariant, block_diffusion_sample, collate, plain_sample
from dtrpo_mega.models.attention import AttentionBackend, DLLMCoreAttention
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import family_names, get_family, model_config

FAMILIES = family_names()


def _model(world_of_one, family, **overrides):
    torch.manual_seed(0)
    return build_model(model_config(family, **overrides)).eval()


@pytest.mark.parametrize(
    "family,qkv_bias,qk_norm,shift,mask_id,variant",
    [
        ("fast_dllm_v2", True, False, True, 151665, MaskVariant.BLOCK_DIFFUSION),
        ("sdar", False, True, False, 151669, MaskVariant.BLOCK_DIFFUSION),
        ("llada", False, False, False, 126336, MaskVariant.BIDIRECTIONAL),
        ("dream", True, False, True, 151666, MaskVariant.BIDIRECTIONAL),
    ],
)
def test_family_fields_land_in_the_model(world_of_one, family, qkv_bias, qk_norm, shift, mask_id, variant):
    big = model_config(family, size=next(s for s in ("7b", "8b", "1.7b") if s in _sizes(family)))
    assert (big.mask_token_id, big.logits_shift, big.attention) == (mask_id, shift, variant)

    cfg = model_config(family)
    model = _model(world_of_one, family)
    params = dict(model.named_parameters())
    attention = model.decoder.layers[0].self_attention
    assert ("decoder.layers.0.self_attention.linear_qkv.bias" in params) == qkv_bias
    if qk_norm:
        assert params["decoder.layers.0.self_attention.q_layernorm.weight"].shape == (cfg.head_dim,)
        assert params["decoder.layers.0.self_attention.k_layernorm.weight"].shape == (cfg.head_dim,)
    else:
        assert not any("layernorm" in n and "self_attention" in n for n in params)
    core = attention.core_attention
    assert isinstance(core, DLLMCoreAttention)
    assert core.rope_theta == get_family(family).traits["rope_theta"]
    assert core.backend == (AttentionBackend.FLEX if torch.cuda.is_available() else AttentionBackend.LOCAL)  # `auto`
    assert cfg.mask_token_id == cfg.vocab_size - 1  # tiny models keep the mask id in range
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * cfg.head_dim
    assert params["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (qkv_rows, cfg.hidden_size)
    assert params["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * cfg.ffn_hidden_size, cfg.hidden_size)


def _sizes(family):
    return {name: size.fields for name, size in get_family(family).sizes.items()}


def test_tied_and_untied_embeddings(world_of_one):
    tied = _model(world_of_one, "sdar", tie_embeddings=True)
    untied = _model(world_of_one, "sdar", tie_embeddings=False)
    assert (tied.output_layer.weight is None
            and tied.shared_embedding_or_output_weight() is tied.embedding.word_embeddings.weight)
    assert untied.output_layer.weight is not None


def test_padded_vocabulary_is_masked(world_of_one):
    model = _model(world_of_one, "llada")
    cfg = model.dllm_config
    assert cfg.padded_vocab(1) == 256 and cfg.vocab_size == 250
    tokens = torch.randint(0, cfg.vocab_size, (1, 12))
    _, layout = collate([plain_sample(tokens[0])], MaskVariant.BIDIRECTIONAL, cfg.block_size, pad_id=0)
    logits = model(tokens, layout)
    assert logits.shape[-1] == 256
    assert torch.isinf(logits[..., 250:]).all() and torch.isfinite(logits[..., :250]).all()
    ce = model(tokens, layout, labels=tokens)
    expected = -torch.log_softmax(logits[..., :250].float(), -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(ce, expected, rtol=1e-5, atol=1e-5)


def test_rope_is_relative(world_of_one):
    """Shifting every position by the same offset leaves the outputs unchanged (rope is applied)."""
    model = _model(world_of_one, "llada")
    tokens = torch.randint(0, 250, (1, 10))
    _, layout = collate([plain_sample(tokens[0])], MaskVariant.BIDIRECTIONAL, 8, pad_id=0)
    _, shifted = collate([plain_sample(tokens[0])], MaskVariant.BIDIRECTIONAL, 8, pad_id=0)
    shifted.positions += 37
    _, scrambled = collate([plain_sample(tokens[0])], MaskVariant.BIDIRECTIONAL, 8, pad_id=0)
    scrambled.positions = scrambled.positions.flip(-1)
    with torch.no_grad():
        base = model(tokens, layout)
        torch.testing.assert_close(model(tokens, shifted), base, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model(tokens, scrambled), base, atol=1e-3), "positions are ignored"


def _one_pass_case(cfg, n, prompt_len, seed):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, cfg.vocab_size - 1, (n,), generator=g)
    noisy = clean.clone()
    response = torch.arange(n) >= prompt_len
    noisy[response & (torch.rand(n, generator=g) < 0.6)] = cfg.mask_token_id
    return clean, noisy


@pytest.mark.parametrize("family", ["fast_dllm_v2", "sdar"])
def test_one_pass_equals_block_by_block_decoding(world_of_one, family):
    """Logits of one [z~ ; y0] pass equal decoding each block with the clean earlier blocks as context."""
    model = _model(world_of_one, family)
    cfg = model.dllm_config
    k = cfg.block_size
    cases = [(21, 5, 1), (16, 8, 2), (19, 3, 3)]  # lengths and prompts not multiples of the block
    samples = [_one_pass_case(cfg, n, p, s) for n, p, s in cases]
    tokens, layout = collate(
        [block_diffusion_sample(noisy, clean, p, k) for (clean, noisy), (_, p, _) in zip(samples, cases)],
        MaskVariant.BLOCK_DIFFUSION, k, pad_id=0,
    )
    with torch.no_grad():
        one_pass = model(tokens, layout)

    checked = 0
    for row, ((clean, noisy), (n, prompt_len, _)) in enumerate(zip(samples, cases)):
        start = (prompt_len // k) * k
        for block_start in range(start, n, k):
            end = min(block_start + k, n)
            # What the decoder runs for this block: clean earlier blocks (cached), then the noisy block.
            context = torch.cat([clean[:block_start], noisy[block_start:end]])
            ref_tokens, ref_layout = collate([plain_sample(context)], MaskVariant.BLOCK_DIFFUSION, k, pad_id=0)
            with torch.no_grad():
                ref = model(ref_tokens, ref_layout)[0]
            noisy_rows = slice(block_start - start, end - start)
            torch.testing.assert_close(one_pass[row, noisy_rows], ref[block_start:end], rtol=1e-5, atol=1e-5)
            clean_rows = slice(n - start, n - start + block_start)
            torch.testing.assert_close(one_pass[row, clean_rows], ref[:block_start], rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked == sum(-(-n // k) - p // k for n, p, _ in cases)


def _backend_outputs(family, backends, device="cpu", dtype=torch.float32, with_grads=True):
    """Logits (and gradients) of the same weights and inputs under each attention backend."""
    cfg = model_config(family)
    clean, noisy = _one_pass_case(cfg, 18, 5, 7)
    if cfg.attention == MaskVariant.BLOCK_DIFFUSION:
        sample = block_diffusion_sample(noisy, clean, 5, cfg.block_size)
    else:
        sample = plain_sample(noisy)
    other = (block_diffusion_sample(clean, clean, 9, cfg.block_size) if cfg.attention == MaskVariant.BLOCK_DIFFUSION
             else plain_sample(clean[:11]))
    tokens, layout = collate([sample, other], cfg.attention, cfg.block_size, pad_id=0, pad_to_multiple=16)
    tokens, layout = tokens.to(device), layout.to(device)
    outputs, weights = {}, None
    for backend in backends:
        model = build_model(model_config(family, attention_backend=backend), params_dtype=dtype)
        weights = weights or model.state_dict()
        # A `te` core attention holds TE's DotProductAttention, whose `_extra_state` (FP8
        # metadata) the other backends lack: load non-strict, but only that may differ.
        loaded = model.load_state_dict(weights, strict=False)
        assert all(key.endswith("._extra_state") for key in loaded.missing_keys + loaded.unexpected_keys), loaded
        with torch.set_grad_enabled(with_grads):
            logits = model(tokens, layout)
            if with_grads:
                logits[..., : cfg.vocab_size].float().pow(2).mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters()} if with_grads else {}
        outputs[backend] = (logits.detach().float(), grads)
    return outputs


@pytest.mark.parametrize("family", ["sdar", "dream"])
def test_flex_backend_matches_local_forward(world_of_one, family):
    """flex_attention has no backward on CPU (torch limitation): forward here, gradients on GPU."""
    outputs = _backend_outputs(family, ("local", "flex"), with_grads=False)
    torch.testing.assert_close(outputs["flex"][0], outputs["local"][0], rtol=1e-5, atol=1e-5)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_query_groups"):
        model_config("sdar", num_query_groups=3)
    with pytest.raises(ValueError, match="mask_token_id"):
        model_config("sdar", mask_token_id=10_000)
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        model_config("gpt2")
    with pytest.raises(ValueError, match=r"TP=4 does not divide num_query_groups \(KV heads\)=2"):
        model_config("sdar").check_parallel(4, 1)
    with pytest.raises(ValueError, match="PP=3 does not divide num_layers=4"):
        model_config("sdar").check_parallel(1, 3)
