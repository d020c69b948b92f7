"""Decoders: first call equals the training forward, reveal order, block confinement, stopping, logged replay."""

import numpy as np
import pytest
import torch

from conftest import float64
from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
from dtrpo_mega.generation.sampler import DecodeConfig, Sampler
from dtrpo_mega.diffusion.scoring import Objective, SequenceSpec, plan_rows
from dtrpo_mega.diffusion.trajectory import SchedulerConfig, response_blocks
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config

EOT = 7
_MODELS = {}


def _model(family):
    if family not in _MODELS:
        torch.manual_seed(0)
        _MODELS[family] = build_model(model_config(family)).eval()
    return _MODELS[family]


class Recorder:
    """Wraps a model; keeps every call's inputs and logits, optionally boosting one token."""

    def __init__(self, model, boost: int | None = None):
        self.model, self.boost, self.calls = model, boost, []

    def __call__(self, tokens, layout):
        logits = self.model(tokens, layout)
        if self.boost is not None:
            logits = logits.clone()
            logits[..., self.boost] += 100.0
        self.calls.append((tokens.clone(), layout, logits.detach().clone()))
        return logits


def _prompt(n, seed):
    return torch.randint(0, 200, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(family, prompts, boost=None, **decode):
    model = _model(family)
    recorder = Recorder(model, boost)
    sampler = Sampler(recorder, model.dllm_config.diffusion, model.dllm_config.vocab_size, DecodeConfig(**decode))
    generations, stats = sampler.generate(prompts, torch.Generator().manual_seed(0))
    return model.dllm_config, generations, stats, recorder.calls


def _absolute(layout, logits, row=0):
    """A call's logits of one row by absolute slot (a cached call forwards only a span); NaN elsewhere."""
    real = layout.segments[row] > 0
    positions = layout.positions[row][real]
    out = torch.full((int(positions.max()) + 1, logits.shape[-1]), float("nan"), dtype=logits.dtype)
    out[positions] = logits[row][real]
    return out


def _confidence(logits, cfg):
    probs = torch.softmax(logits[..., : cfg.vocab_size].float(), -1)
    probs[..., cfg.mask_token_id] = 0.0
    return probs.max(-1)


@pytest.mark.parametrize("family", ["fast_dllm_v2", "sdar", "llada", "dream", "llada2", "sdar_moe"])
def test_first_call_equals_training_forward(world_of_one, family):
    prompts = [_prompt(5, 1), _prompt(8, 2)]
    cfg, _, _, calls = _run(family, prompts, max_new_tokens=12)
    tokens, _, logits = calls[0]
    model, k = _model(family), cfg.block_size
    for row, prompt in enumerate(prompts):
        end = len(prompt) + 12 if cfg.attention == MaskVariant.BIDIRECTIONAL else (len(prompt) // k + 1) * k
        context = torch.tensor(prompt + [cfg.mask_token_id] * (end - len(prompt)))
        ref_tokens, ref_layout = collate([plain_sample(context)], cfg.attention, k, pad_id=0)
        with torch.no_grad():
            ref = model(ref_tokens, ref_layout)[0]
        assert torch.equal(tokens[row, :end], context)
        torch.testing.assert_close(logits[row, :end], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["fast_dllm_v2", "sdar", "llada"])
def test_threshold_one_reveals_one_token_per_step_by_confidence(world_of_one, family):
    prompt = _prompt(5, 3)
    cfg, (gen,), stats, calls = _run(family, [prompt], threshold=1.0, max_new_tokens=14)
    p, shift, o = len(prompt), int(cfg.logits_shift), cfg.diffusion.origin(len(prompt))
    assert sorted(gen.reveal_steps) == list(range(len(gen.tokens))) == list(range(len(calls)))
    assert stats.tokens_per_forward == 1.0
    steps = np.asarray(gen.reveal_steps)
    for s, (tokens, layout, logits) in enumerate(calls):
        pos = p + int(np.flatnonzero(steps == s)[0])
        if shift and cfg.diffusion.starts_block(pos, p):
            continue  # a block's first token: its own forced step
        conf, argmax = _confidence(_absolute(layout, logits), cfg)
        sub = (pos - o) // cfg.sub_block_size
        block_stop = o + ((pos - o) // cfg.block_size + 1) * cfg.block_size
        masked = [q for q in range(p, min(block_stop, p + len(steps)))
                  if steps[q - p] >= s and (q - o) // cfg.sub_block_size == sub]
        best = max(masked, key=lambda q: float(conf[q - shift]))
        assert best == pos, f"step {s}: revealed {pos}, most confident masked position is {best}"
        assert gen.tokens[pos - p] == int(argmax[pos - shift])


@pytest.mark.parametrize("family,decode", [("fast_dllm_v2", dict(threshold=1.0)),
                                           ("fast_dllm_v2", dict(tokens_per_step=3)), ("sdar", dict(tokens_per_step=2)),
                                           ("llada", dict(tokens_per_step=3))])
def test_reveals_stay_in_the_current_block_and_sub_block(world_of_one, family, decode):
    prompt = _prompt(5, 4)
    cfg, (gen,), _, calls = _run(family, [prompt], max_new_tokens=19, **decode)
    p, k, sub, o = len(prompt), cfg.block_size, cfg.sub_block_size, cfg.diffusion.origin(len(prompt))
    assert o == (0 if family != "llada" else p % k)  # LLaDA's blocks start at the prompt's end
    steps = np.asarray(gen.reveal_steps)
    positions = np.arange(p, p + len(steps))
    for s, (tokens, layout, _) in enumerate(calls):
        revealed = positions[steps == s] - o
        assert len(revealed) >= 1 and len(set(revealed // k)) == 1 and len(set(revealed // sub)) == 1
        earlier_unfinished = positions[((positions - o) // k < revealed[0] // k) & (steps > s)]
        assert len(earlier_unfinished) == 0
        if cfg.attention == MaskVariant.BLOCK_DIFFUSION:  # the decoder sees nothing past the current block
            assert int(layout.positions[0][layout.segments[0] > 0].max()) + 1 == min((revealed[0] // k + 1) * k, p + 19)
    for block in response_blocks(p, p + len(steps), k, o):
        idx = np.asarray(block) - p
        later = steps[idx.max() + 1 :]
        assert later.size == 0 or steps[idx].max() < later.min()


@pytest.mark.parametrize("family", ["fast_dllm_v2", "sdar", "llada", "dream"])
def test_stops_at_end_of_turn(world_of_one, family):
    prompts = [_prompt(5, 5), _prompt(9, 6)]
    cfg, gens, stats, calls = _run(family, prompts, boost=EOT, max_new_tokens=40, end_of_turn_id=EOT)
    for prompt, gen in zip(prompts, gens):
        # the answer is cut at end-of-turn; the rest of its block was decoded too and is kept as the tail
        end = len(prompt) + len(gen.tokens) + len(gen.tail)
        assert (gen.ended and gen.tokens == [EOT] and set(gen.tail) <= {EOT}
                and (end - cfg.diffusion.origin(len(prompt))) % cfg.block_size == 0)
        assert len(gen.reveal_steps) == 1 + len(gen.tail)
    assert stats.new_tokens == len(prompts)  # tails are not counted
    assert len(calls) <= 2 * cfg.block_size // cfg.sub_block_size + 1  # one block's worth, not 40 tokens'


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_full_attention_decoders_decode_every_slot_unless_told_to_stop(world_of_one, family):
    """LLaDA's and Dream's own decoders run to max_new_tokens: the slots after end-of-turn are part of the
    trajectory."""
    prompt = _prompt(5, 5)
    cfg, (gen,), _, calls = _run(family, [prompt], boost=EOT, max_new_tokens=24, end_of_turn_id=EOT,
                                 stop_at_end_of_turn=False)
    assert gen.ended and gen.tokens == [EOT] and len(gen.tail) == 23 and sorted(gen.reveal_steps)[-1] == len(calls) - 1


@pytest.mark.parametrize("family,decode", [("fast_dllm_v2", dict(threshold=0.5)),
                                           ("fast_dllm_v2", dict(tokens_per_step=1)),
                                           ("sdar", dict(tokens_per_step=2)), ("llada2", dict(threshold=0.5)),
                                           ("sdar_moe", dict(tokens_per_step=1))])
def test_kv_cache_gives_the_uncached_logits_and_tokens(world_of_one, family, decode):
    """Cached calls forward only the span after the cache; every logit they give equals the one of
    recomputing the clean prefix (float64), so the generations are identical."""
    torch.manual_seed(0)
    model = float64(build_model(model_config(family, num_layers=2))).eval()
    prompts = [_prompt(5, 11), _prompt(8, 12), _prompt(13, 13)]  # partial and whole prompt blocks
    runs = {}
    for kv_cache in (True, False):
        recorder = Recorder(model)
        sampler = Sampler(recorder, model.dllm_config.diffusion, model.dllm_config.vocab_size,
                          DecodeConfig(max_new_tokens=21, kv_cache=kv_cache, **decode))
        runs[kv_cache] = sampler.generate(prompts)[0], recorder.calls
    (cached, cached_calls), (full, full_calls) = runs[True], runs[False]
    assert ([g.tokens for g in cached] == [g.tokens for g in full]
            and [g.reveal_steps for g in cached] == [g.reveal_steps for g in full])
    assert len(cached_calls) == len(full_calls)
    spans = 0
    for (_, layout, logits), (_, full_layout, full_logits) in zip(cached_calls, full_calls):
        for row in range(logits.shape[0]):
            if not bool((layout.segments[row] > 0).any()):
                continue
            got, want = _absolute(layout, logits, row), _absolute(full_layout, full_logits, row)
            present = ~got[:, 0].isnan()
            spans += int(present.sum())
            torch.testing.assert_close(got[present], want[: len(got)][present], rtol=1e-10, atol=1e-10)
    assert spans < sum(int((lay.segments > 0).sum()) for _, lay, _ in full_calls)  # the cache saved work


def test_batch_equals_one_by_one_and_temperature_is_seeded(world_of_one):
    prompts = [_prompt(3, 7), _prompt(10, 8), _prompt(6, 9)]
    _, batch, stats, _ = _run("fast_dllm_v2", prompts, tokens_per_step=2, max_new_tokens=11)
    alone = [_run("fast_dllm_v2", [p], tokens_per_step=2, max_new_tokens=11)[1][0] for p in prompts]
    assert [g.tokens for g in batch] == [g.tokens for g in alone]
    assert [g.reveal_steps for g in batch] == [g.reveal_steps for g in alone]
    assert stats.new_tokens == 33 and stats.tokens_per_forward > 1.0
    sampled = [_run("sdar", prompts[:1], temperature=1.0, max_new_tokens=12)[1][0].tokens for _ in range(2)]
    greedy = _run("sdar", prompts[:1], max_new_tokens=12)[1][0].tokens
    assert sampled[0] == sampled[1] != greedy


@pytest.mark.parametrize("family", ["fast_dllm_v2", "llada"])
def test_logged_trajectory_replays_reveal_order(world_of_one, family):
    prompt = _prompt(6, 10)
    cfg, (gen,), _, _ = _run(family, [prompt], tokens_per_step=2, max_new_tokens=17)
    tokens = np.asarray(prompt + gen.tokens + gen.tail)
    spec = SequenceSpec(tokens, len(prompt), index=0, role=0, reveal_steps=np.asarray(gen.reveal_steps))
    rows = plan_rows(spec, cfg.diffusion, SchedulerConfig(mode="logged"), Objective.EXACT_TRAJECTORY, seed=0, epoch=0)
    steps = np.concatenate([np.full(len(prompt), -1), gen.reveal_steps])
    for block in response_blocks(len(prompt), len(tokens), cfg.block_size, cfg.diffusion.origin(len(prompt))):
        idx = np.asarray(block)
        for s, logged in enumerate(np.unique(steps[idx])):
            scored = idx[rows[s].weights[idx] > 0]
            assert scored.tolist() == idx[steps[idx] == logged].tolist()
            still_masked = idx[rows[s].noisy[idx] == cfg.mask_token_id]
            assert still_masked.tolist() == idx[steps[idx] >= logged].tolist()


def test_generate_tool_records_logged_steps(world_of_one, tmp_path, capsys):
    import importlib.util
    import json

    from dtrpo_mega.checkpoint.model import save_model
    from dtrpo_mega.data.synthetic import write_tokenizer

    save_model(_model("fast_dllm_v2"), tmp_path / "iter_0000001" / "model")
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json")
    spec = importlib.util.spec_from_file_location("generate_tool", "tools/generate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "traj.jsonl"
    rc = tool.main(["--ckpt", str(tmp_path / "iter_0000001"), "--tokenizer", str(tokenizer), "--prompt",
                    "count up from 5 :", "--prompt", "count up from 17 :", "--max-new-tokens", "10",
                    "--tokens-per-step", "2", "--record-trajectory", str(out)])
    assert rc == 0 and "tokens/forward" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and records[0]["prompt"] == "count up from 5 :"
    for record in records:
        assert len(record["steps"]) == len(record["response_ids"]) == 10
        _, per_step = np.unique(record["steps"], return_counts=True)
        assert per_step.max() <= 2 and len(per_step) >= 5  # --tokens-per-step 2


def _llada_generate(model, prompt, gen_length, block_length, steps):
    """LLaDA's `generate` (ML-GSAI/LLaDA generate.py), greedy low-confidence remasking, written from
    its description: blocks of `block_length` from the prompt's end, each block's masks split evenly
    over `steps / num_blocks` steps (remainder first), the most confident masked tokens of the
    current block revealed each step."""
    cfg = model.dllm_config
    x = torch.tensor(prompt + [cfg.mask_token_id] * gen_length)
    p, blocks = len(prompt), gen_length // block_length
    per_block = steps // blocks
    for b in range(blocks):
        start, stop = p + b * block_length, p + (b + 1) * block_length
        masked = int((x[start:stop] == cfg.mask_token_id).sum())
        counts = [masked // per_block + (1 if i < masked % per_block else 0) for i in range(per_block)]
        for k in counts:
            tokens, layout = collate([plain_sample(x)], cfg.attention, cfg.block_size, pad_id=0)
            with torch.no_grad():
                probs = torch.softmax(model(tokens, layout)[0, :, : cfg.vocab_size].float(), -1)
            x0 = probs.argmax(-1)
            confidence = probs.gather(-1, x0[:, None])[:, 0]
            confidence[stop:] = float("-inf")
            confidence = torch.where(x == cfg.mask_token_id, confidence, torch.tensor(float("-inf")))
            chosen = torch.topk(confidence, k).indices
            x[chosen] = x0[chosen]
    return x[p:].tolist()


def test_llada_decoding_equals_its_own_generate(world_of_one):
    """A 10-token prompt and blocks of 8: LLaDA's blocks start at the prompt's end (absolute blocks would differ)."""
    model = _model("llada")
    prompt = _prompt(10, 21)
    expected = _llada_generate(model, prompt, gen_length=16, block_length=8, steps=8)
    _, (gen,), _, _ = _run("llada", [prompt], tokens_per_step=2, max_new_tokens=16, stop_at_end_of_turn=False)
    assert gen.tokens + gen.tail == expected
