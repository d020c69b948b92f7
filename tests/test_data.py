"""Preference data: JSONL formats, chat templates, tokenizers, indexed dataset, fingerprint, bad input.

Tokenizers are built here (a SentencePiece model and a byte-level BPE `tokenizer.json`), small and
holding the special tokens of every family's chat template; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import pickle
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dtrpo_mega.data import (ChatEncoder, DataConfig, PreferenceDataset, build_preference_dataset, check_vocabulary,
                             load_tokenizer)
from dtrpo_mega.data.indexed import paths
from dtrpo_mega.models.families import FAMILIES, chat_template, model_config

REPO = Path(__file__).resolve().parents[1]
SPECIALS = sorted({t for family in FAMILIES.values() for t in family.chat.special_tokens})
CORPUS = [string.printable[:94] + " \n", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
          "system user assistant why is the sky blue? because of rayleigh scattering of light"] * 20


def _sentencepiece(path: Path, specials: list[str]) -> Path:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=160, model_type="bpe", minloglevel=2,
        user_defined_symbols=[*specials, "\n"], normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, character_coverage=1.0)
    path.write_bytes(model.getvalue())
    return path


def _huggingface(folder: Path, config: dict) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "sentencepiece": _sentencepiece(root / "sp.model", SPECIALS),
        "huggingface": _huggingface(root / "hf",
                                    {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|im_end|>"}}),
    }


@pytest.fixture(params=["sentencepiece", "huggingface"])
def tokenizer(request, tokenizers) -> Path:
    return tokenizers[request.param]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def build(tmp_path: Path, records: list, tokenizer: Path, family: str = "fast_dllm_v2", max_length: int = 512,
          name: str = "out", **kwargs) -> PreferenceDataset:
    data = records if isinstance(records, Path) else write_jsonl(tmp_path / "data.jsonl", records)
    build_preference_dataset(data, tokenizer, family, tmp_path / name, max_length, **kwargs)
    return PreferenceDataset.open(tmp_path / name)


def chat(prompt: str, chosen: str, rejected: str, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def completion(prompt: str, text: str, conversational: bool = False) -> dict:
    if not conversational:
        return {"prompt": prompt, "completion": text}
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": text}]}


PLAIN = [{"prompt": "why is the sky blue?", "chosen": "rayleigh scattering", "rejected": "the sea", "id": 7},
         {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]


# -- formats and chat templates ---------------------------------------------------------------------


@pytest.mark.parametrize("family,eot,bos",
                         [("fast_dllm_v2", "<|im_end|>", ""), ("llada", "<|eot_id|>", "<|startoftext|>")])
def test_plain_round_trip(tmp_path, tokenizer, family, eot, bos):
    ds = build(tmp_path, PLAIN, tokenizer, family)
    tok = load_tokenizer(tokenizer)
    assert len(ds) == 2 and ds.metadata["counts"] == dict(read=2, kept=2, truncated=0, dropped=0)
    assert ds.kind == ds.metadata["kind"] == "preference"
    pair = ds[0]
    assert pair.index == 0 and pair.prompt.dtype == np.int64 and pair.chosen_steps is None
    assert tok.decode(pair.prompt) == bos + "why is the sky blue?"
    assert tok.decode(pair.chosen) == "rayleigh scattering" + eot
    assert tok.decode(pair.rejected) == "the sea" + eot
    assert pair.chosen[-1] == tok.token_to_id(eot) == ds.metadata["tokenizer"]["end_of_turn_id"]
    assert ds[-1].index == 1 and tok.decode(ds[1].chosen) == "4" + eot


EXPECTED_PROMPTS = {
    "fast_dllm_v2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nwhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
    "dream": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
             "<|im_start|>user\nwhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
    "sdar": "<|im_start|>user\nwhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
    "llada": "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nwhy is the sky blue?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


@pytest.mark.parametrize("family", sorted(EXPECTED_PROMPTS))
def test_conversational_round_trip(tmp_path, tokenizer, family):
    # LLaDA's template trims content
    question = " why is the sky blue?" if family == "llada" else "why is the sky blue?"
    ds = build(tmp_path, [chat(question, "light", "the sea")], tokenizer, family)
    tok, template = load_tokenizer(tokenizer), chat_template(family)
    pair = ds[0]
    assert tok.decode(pair.prompt) == EXPECTED_PROMPTS[family]
    # SDAR: an empty think block
    assert tok.decode(pair.chosen) == template.response_prefix + "light" + template.end_of_turn
    for special in template.special_tokens:  # each marker is one token id, never spelled out in text pieces
        assert list(pair.prompt).count(tok.token_to_id(special)) == EXPECTED_PROMPTS[family].count(special)


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_completion_round_trip(tmp_path, tokenizer, conversational):
    ds = build(tmp_path, [completion("why is the sky blue?", "rayleigh scattering", conversational),
                          completion("2+2=", "4", conversational)], tokenizer)
    tok, eot = load_tokenizer(tokenizer), ds.metadata["tokenizer"]["end_of_turn_id"]
    assert len(ds) == 2 and ds.kind == ds.metadata["kind"] == "completion" and not ds.metadata["has_steps"]
    example = ds[0]
    assert tok.decode(example.prompt) == (EXPECTED_PROMPTS["fast_dllm_v2"] if conversational
                                          else "why is the sky blue?")
    assert tok.decode(example.chosen) == "rayleigh scattering<|im_end|>" and example.chosen[-1] == eot
    assert example.rejected.dtype == np.int64 and example.rejected.shape == (0,) and example.chosen_steps is None
    assert tok.decode(ds[1].chosen) == "4<|im_end|>" and ds[1].rejected.shape == (0,)
    meta = paths(tmp_path / "out")["metadata"]  # datasets written before `kind` existed hold preference pairs
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "kind"}))
    assert PreferenceDataset.open(tmp_path / "out").kind == "preference"


@pytest.mark.parametrize("first,second", [("preference", "completion"), ("completion", "preference")])
def test_mixed_kinds_name_both_lines(tmp_path, tokenizers, first, second):
    record = {"preference": PLAIN[0], "completion": completion("a", "b")}
    with pytest.raises(ValueError,
                       match=rf"data.jsonl:2: a {second} record but the first record \(.*data.jsonl:1\) is a {first}"):
        build(tmp_path, [record[first], record[second]], tokenizers["sentencepiece"])


def test_system_message_replaces_the_default(tmp_path, tokenizers):
    ds = build(tmp_path, [chat("hi", "hello", "go away", system="be brief")], tokenizers["huggingface"])
    rendered = load_tokenizer(tokenizers["huggingface"]).decode(ds[0].prompt)
    assert rendered.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi")


def test_implicit_prompt_matches_explicit(tmp_path, tokenizers):
    explicit = chat("why is the sky blue?", "light", "the sea")
    implicit = {"chosen": explicit["prompt"] + explicit["chosen"],
                "rejected": explicit["prompt"] + explicit["rejected"]}
    a = build(tmp_path, [explicit], tokenizers["huggingface"], name="a")[0]
    b = build(tmp_path, [implicit], tokenizers["huggingface"], name="b")[0]
    for key in ("prompt", "chosen", "rejected"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_message_text_cannot_inject_special_tokens(tmp_path, tokenizers):
    ds = build(tmp_path, [chat("say <|im_end|>", "<|im_end|> ok", "no")], tokenizers["huggingface"])
    eot = load_tokenizer(tokenizers["huggingface"]).token_to_id("<|im_end|>")
    assert list(ds[0].chosen).count(eot) == 1 and ds[0].chosen[-1] == eot


def test_examples_preprocess(tmp_path, tokenizers):
    for sample in sorted((REPO / "examples" / "data").glob("*.jsonl")):
        counts = build_preference_dataset(sample, tokenizers["huggingface"], "fast_dllm_v2", tmp_path / sample.stem,
                                          512)
        assert counts["read"] == counts["kept"] > 0, sample


# -- indexed dataset --------------------------------------------------------------------------------


def test_reads_through_memory_maps(tmp_path, tokenizers):
    ds = build(tmp_path, PLAIN * 3, tokenizers["sentencepiece"])
    assert isinstance(ds.tokens, np.memmap) and isinstance(ds.bounds, np.memmap) and ds.steps is None
    assert ds.metadata["num_tokens"] == len(ds.tokens) == int(ds.bounds[-1, -1])
    assert ds.metadata["settings"]["family"] == "fast_dllm_v2" and ds.metadata["settings"]["block_size"] == 32
    clone = pickle.loads(blob := pickle.dumps(ds))  # workers reopen the maps rather than copy the data
    assert len(blob) < 500 and clone.fingerprint == ds.fingerprint and isinstance(clone.tokens, np.memmap)
    np.testing.assert_array_equal(clone[5].rejected, ds[5].rejected)
    with pytest.raises(IndexError):
        ds[6]


def test_rewrite_is_atomic_and_leaves_no_temporary_files(tmp_path, tokenizers):
    build(tmp_path, PLAIN, tokenizers["sentencepiece"])
    with pytest.raises(ValueError):
        build(tmp_path, PLAIN + ["{not json"], tokenizers["sentencepiece"])
    assert len(PreferenceDataset.open(tmp_path / "out")) == 2  # the failed run left the old dataset intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "out.bin", "out.idx.npy", "out.json"]


@pytest.mark.parametrize("damage,message", [
    ("missing", "out.json not found"),
    ("json", "corrupt metadata"),
    ("bin", "expected"),
    ("idx", "corrupt index"),
])
def test_open_rejects_missing_or_corrupt_files(tmp_path, tokenizers, damage, message):
    build(tmp_path, PLAIN, tokenizers["sentencepiece"])
    files = paths(tmp_path / "out")
    if damage == "missing":
        files["metadata"].unlink()
    elif damage == "json":
        files["metadata"].write_text("{")
    elif damage == "bin":
        files["tokens"].write_bytes(files["tokens"].read_bytes()[:-4])
    else:
        np.save(files["index"], np.zeros((2, 3), dtype=np.int64))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        PreferenceDataset.open(tmp_path / "out")


# -- fingerprint ------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_tracks_data_tokenizer_and_settings(tmp_path, tokenizers):
    sp = tokenizers["sentencepiece"]
    data = write_jsonl(tmp_path / "data.jsonl", PLAIN)

    def fp(name, data=data, tokenizer=sp, **kwargs):
        build_preference_dataset(data, tokenizer, kwargs.pop("family", "fast_dllm_v2"), tmp_path / name,
                                 kwargs.pop("max_length", 512), **kwargs)
        return PreferenceDataset.open(tmp_path / name).fingerprint

    base = fp("base")
    moved = tmp_path / "elsewhere" / "copy.model"
    moved.parent.mkdir()
    shutil.copy(sp, moved)
    moved_data = tmp_path / "elsewhere" / "data.jsonl"
    shutil.copy(data, moved_data)
    assert fp("again") == fp("moved", data=moved_data, tokenizer=moved) == base  # paths do not enter it
    changed_data = write_jsonl(tmp_path / "changed.jsonl", [PLAIN[0], {**PLAIN[1], "rejected": "6"}])
    variants = [
        fp("data", data=changed_data),
        fp("tokenizer", tokenizer=tokenizers["huggingface"]),
        fp("max_length", max_length=256),
        fp("overlong", overlong="drop"),
        fp("family", family="sdar"),
        fp("block", block_size=8),
    ]
    assert len({base, *variants}) == 1 + len(variants)


# -- over-long pairs --------------------------------------------------------------------------------

LONG = "the quick brown fox jumps over the lazy dog " * 8


def test_truncate_keeps_the_prompt_and_counts(tmp_path, tokenizers, caplog):
    records = [PLAIN[0], {"prompt": "2+2=", "chosen": "4", "rejected": LONG}, PLAIN[1]]
    with caplog.at_level(logging.WARNING, logger="dtrpo_mega.data.preprocess"):
        ds = build(tmp_path, records, tokenizers["sentencepiece"], max_length=40)
    assert ds.metadata["counts"] == dict(read=3, kept=3, truncated=1, dropped=0)
    pair, eot = ds[1], ds.metadata["tokenizer"]["end_of_turn_id"]
    np.testing.assert_array_equal(pair.prompt, ds[2].prompt)
    assert len(pair.prompt) + len(pair.rejected) == 40 and pair.rejected[-1] != eot and pair.chosen[-1] == eot
    assert "1 of 3 examples truncated by max_length=40" in caplog.text and "data.jsonl:2" in caplog.text


def test_drop_counts_long_pairs_and_long_prompts(tmp_path, tokenizers, caplog):
    records = [PLAIN[0], {"prompt": "2+2=", "chosen": LONG, "rejected": "5"},
               {"prompt": LONG, "chosen": "a", "rejected": "b"}]
    with caplog.at_level(logging.WARNING, logger="dtrpo_mega.data.preprocess"):
        ds = build(tmp_path, records, tokenizers["sentencepiece"], max_length=40, overlong="drop")
    assert ds.metadata["counts"] == dict(read=3, kept=1, truncated=0, dropped=2)
    assert len(ds) == 1 and ds[0].index == 0
    assert "2 of 3 examples dropped" in caplog.text and "data.jsonl:3" in caplog.text


def test_everything_dropped_is_an_error(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="no examples to write .* 1 dropped"):
        build(tmp_path, [{"prompt": LONG, "chosen": "a", "rejected": "b"}], tokenizers["sentencepiece"], max_length=20,
              overlong="drop")


# -- logged trajectories ----------------------------------------------------------------------------


def _response_len(tokenizer: Path, text: str) -> int:
    return len(ChatEncoder(chat_template("fast_dllm_v2"), load_tokenizer(tokenizer)).response(text,
                                                                                           conversational=False))


def test_logged_steps_are_stored_and_truncated_with_the_response(tmp_path, tokenizer):
    n_c, n_r = _response_len(tokenizer, "rayleigh scattering"), _response_len(tokenizer, LONG)
    records = [{**PLAIN[0], "chosen_steps": list(range(n_c)), "rejected_steps": [3] * n_c},
               {**PLAIN[0], "rejected": LONG, "chosen_steps": [1] * n_c, "rejected_steps": list(range(n_r))}]
    records[0]["rejected"] = "rayleigh scattering"
    ds = build(tmp_path, records, tokenizer, max_length=40)
    assert ds.metadata["has_steps"] and isinstance(ds.steps, np.memmap)
    first, second = ds[0], ds[1]
    np.testing.assert_array_equal(first.chosen_steps, np.arange(n_c))
    np.testing.assert_array_equal(first.rejected_steps, np.full(n_c, 3))
    assert (first.chosen_steps.dtype == np.int64
            and len(second.rejected_steps) == len(second.rejected) == 40 - len(second.prompt))
    np.testing.assert_array_equal(second.rejected_steps, np.arange(len(second.rejected)))


# -- bad input: every error names the file and line, or the setting ---------------------------------

GOOD = json.dumps(PLAIN[0])


@pytest.mark.parametrize("lines,message", [
    ([GOOD, GOOD, '{"prompt": "a", "chosen": "b", "rejected": "c"'], "data.jsonl:3: malformed JSON"),
    ([GOOD, '{"prompt": "a", "chosen": "b"}'], "data.jsonl:2: missing key 'rejected'"),
    (['{"chosen": "b", "rejected": "c"}'], "data.jsonl:1: missing key 'prompt'"),
    ([GOOD, '{"prompt": "a", "chosen": "  ", "rejected": "c"}'], "data.jsonl:2: 'chosen' is an empty response"),
    ([json.dumps(chat("a", "b", ""))], "data.jsonl:1: 'rejected' is an empty response"),
    (['{"prompt": "", "chosen": "b", "rejected": "c"}'], "data.jsonl:1: 'prompt' is empty"),
    (['[1, 2]'], "data.jsonl:1: expected a JSON object"),
    ([json.dumps({**chat("a", "b", "c"), "chosen": "b"})],
     "data.jsonl:1: 'chosen' must be a list holding one assistant message"),
    ([json.dumps({**chat("a", "b", "c"), "prompt": [{"role": "bot", "content": "a"}]})],
     "data.jsonl:1: prompt\\[0\\] has role 'bot'"),
    ([json.dumps({"chosen": chat("a", "b", "c")["chosen"], "rejected": chat("x", "b", "c")["rejected"]})],
     "data.jsonl:1: no 'prompt' key, and 'chosen' and 'rejected' do not share"),
    ([json.dumps({**PLAIN[0], "chosen_steps": [0]})],
     "data.jsonl:1: 'chosen_steps' is given but 'rejected_steps' is not"),
    ([json.dumps({**PLAIN[0], "chosen_steps": [0, -1], "rejected_steps": [0]})],
     "data.jsonl:1: 'chosen_steps' must be a list of non-negative"),
    ([json.dumps({**PLAIN[0], "chosen_steps": [0, 1], "rejected_steps": [0, 1]})],
     "data.jsonl:1: 'chosen_steps' has 2 values but the tokenized chosen response has"),
    (['{"prompt": "a"}'], "data.jsonl:1: missing key 'chosen' .*'rejected'.* 'prompt' and 'completion'"),
    (['{"completion": "b"}'], "data.jsonl:1: missing key 'prompt'"),
    ([json.dumps({**completion("a", "b"), "chosen": "c"})],
     r"data.jsonl:1: a record holds either 'completion' \(prompt-completion\) or 'chosen' and 'rejected' "
     r"\(preference\), not both"),
    ([json.dumps(completion("a", "  "))], "data.jsonl:1: 'completion' is an empty response"),
    ([json.dumps(completion("a", "", conversational=True))], "data.jsonl:1: 'completion' is an empty response"),
    ([json.dumps({**completion("a", "b", conversational=True), "completion": [{"role": "user", "content": "b"}]})],
     r"data.jsonl:1: completion\[0\] must have role 'assistant'"),
    ([json.dumps({**completion("a", "b"), "completion_steps": [0]})],
     "data.jsonl:1: 'completion_steps' is given, but a prompt-completion record carries no logged reveal steps"),
    ([json.dumps({**completion("a", "b"), "chosen_steps": [0], "rejected_steps": [0]})],
     "data.jsonl:1: 'chosen_steps' is given, but a prompt-completion record"),
    ([json.dumps({"prompt": LONG, "chosen": "b", "rejected": "c"})],
     r"data.jsonl:1: the prompt alone has \d+ tokens, .*max_length=20"),
])
def test_bad_records_name_file_and_line(tmp_path, tokenizers, lines, message):
    with pytest.raises(ValueError, match=message):
        build(tmp_path, lines, tokenizers["sentencepiece"], max_length=20)
    assert not (tmp_path / "out.json").exists()


def test_mixed_logged_steps_name_both_lines(tmp_path, tokenizers):
    n = _response_len(tokenizers["sentencepiece"], PLAIN[0]["chosen"])
    m = _response_len(tokenizers["sentencepiece"], PLAIN[0]["rejected"])
    lines = [{**PLAIN[0], "chosen_steps": [0] * n, "rejected_steps": [0] * m}, PLAIN[0]]
    with pytest.raises(ValueError,
                       match=r"data.jsonl:2: lacks logged reveal steps but the first record \(.*data.jsonl:1\)"):
        build(tmp_path, lines, tokenizers["sentencepiece"])


def test_invalid_utf8_names_the_line(tmp_path, tokenizers):
    data = tmp_path / "data.jsonl"
    data.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match="data.jsonl:2: not valid UTF-8"):
        build(tmp_path, data, tokenizers["sentencepiece"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_length=1), "max_length must be an integer >= 2"),
    (dict(overlong="cut"), r"overlong='cut'; choose from \['truncate', 'drop'\]"),
    (dict(family="gpt2"), "family='gpt2'"),
    (dict(block_size=0), "block_size must be a positive integer"),
])
def test_bad_settings_name_the_setting(tmp_path, tokenizers, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(tmp_path, PLAIN, tokenizers["sentencepiece"], **kwargs)


def test_tokenizer_without_template_tokens_names_token_and_path(tmp_path):
    bare = _sentencepiece(tmp_path / "bare.model", [])
    with pytest.raises(ValueError, match=r"tokenizer .*bare.model has no '<\|endoftext\|>' token"):
        build(tmp_path, PLAIN, bare)


def test_tokenizer_of_another_family_is_rejected(tmp_path):
    folder = _huggingface(tmp_path / "llama", {"chat_template": "{{ '<|start_header_id|>' }}...{{ '<|eot_id|>' }}"})
    with pytest.raises(ValueError, match=r"tokenizer .*llama.*chat_template never uses '<\|im_end\|>'"):
        build(tmp_path, PLAIN, folder, family="sdar")
    assert len(build(tmp_path, PLAIN, folder, family="llada")) == 2


def test_unreadable_tokenizer_names_the_path(tmp_path):
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.model: not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "broken.model")
    with pytest.raises(FileNotFoundError, match="nothing.json does not exist"):
        load_tokenizer(tmp_path / "nothing.json")


def test_vocabulary_mismatch_names_the_setting(tmp_path, tokenizers):
    ds = build(tmp_path, PLAIN, tokenizers["huggingface"])  # a 300-token vocabulary
    check_vocabulary(ds, vocab_size=512, mask_token_id=511)
    with pytest.raises(ValueError, match=r"model.vocab_size=250 is smaller than the vocabulary .*\(300 tokens"):
        check_vocabulary(ds, vocab_size=250, mask_token_id=249)
    five = int(ds[1].rejected[0])  # "5": a token of pair 1 only
    assert five not in np.concatenate([ds[0].prompt, ds[0].chosen, ds[0].rejected, ds[1].prompt, ds[1].chosen])
    with pytest.raises(ValueError,
                       match=rf"pair 1 contains token id {five}, the mask token \(model.mask_token_id={five}\)"):
        check_vocabulary(ds, vocab_size=512, mask_token_id=five)


# -- training-side config ---------------------------------------------------------------------------


def test_data_config_opens_and_checks_against_the_model(tmp_path, tokenizers):
    ds = build(tmp_path, PLAIN, tokenizers["sentencepiece"])  # a 160-token vocabulary fits the tiny models
    cfg = DataConfig(path=str(tmp_path / "out"), fingerprint=ds.fingerprint)
    assert len(cfg.open(model_config("fast_dllm_v2", "tiny"))) == 2
    with pytest.raises(ValueError, match="model.family='llada' but the data .* was rendered for 'fast_dllm_v2'"):
        cfg.open(model_config("llada", "tiny"))
    with pytest.raises(ValueError, match="model.vocab_size=100 is smaller"):
        cfg.open(model_config("fast_dllm_v2", "tiny", vocab_size=100))
    with pytest.raises(ValueError, match="data.fingerprint=0{64} but the dataset"):
        DataConfig(path=cfg.path, fingerprint="0" * 64).open()


@pytest.mark.parametrize("kwargs,message", [
    (dict(pad_to_multiple=0), "data.pad_to_multiple must be a positive integer"),
    (dict(fingerprint="abc"), "data.fingerprint must be a sha256 hex digest"),
])
def test_data_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(path="x", **kwargs)


def test_data_config_needs_a_path():
    with pytest.raises(ValueError, match="data.path is required"):
        DataConfig().open()


# -- command line -----------------------------------------------------------------------------------


def _tool():
    spec = importlib.util.spec_from_file_location("preprocess_data", REPO / "tools" / "preprocess_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the entry point is guarded: importing runs nothing
    return module


def test_cli_prints_counts_and_fingerprint(tmp_path, tokenizers, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", PLAIN + [{"prompt": "2+2=", "chosen": LONG, "rejected": "5"}])
    args = ["--input", str(data), "--tokenizer", str(tokenizers["huggingface"]), "--family", "sdar",
            "--output", str(tmp_path / "out"), "--max-length", "64"]
    assert _tool().main(args + ["--overlong", "drop"]) == 0
    out = capsys.readouterr().out
    fingerprint = PreferenceDataset.open(tmp_path / "out").fingerprint
    assert "read=3 kept=2 truncated=0 dropped=1" in out and fingerprint in out
    write_jsonl(data, [GOOD, "{oops"])
    assert _tool().main(args) == 2
    assert f"error: {data}:2: malformed JSON" in capsys.readouterr().err
