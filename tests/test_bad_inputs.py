"""Bad inputs to the tools give one clear line naming the file (and the field or line), never a traceback.

Conversion (config.json, the shard index, safetensors files), preprocessing (the input JSONL) and
generation (tokenizer against the model, prompts). Each case is checked through the library call
(the exception and its message) and, for the tools, through `main` (exit status 2 and one
`error: ...` line on stderr).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import load_tool
from dtrpo_mega.convert import import_hf
from dtrpo_mega.data import ChatEncoder, build_preference_dataset, load_tokenizer
from dtrpo_mega.generation.model import PromptRenderer
from dtrpo_mega.models.families import chat_template
from dtrpo_mega.data.synthetic import write_tokenizer

quiet = dict(log=lambda *_: None)


def _one_error_line(capsys, *expected: str) -> str:
    """The tool's stderr is exactly one `error: ...` line holding every expected text."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --- conversion --------------------------------------------------------------------------------

LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=250, hidden_size=64,
             intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0, mask_token_id=249)
LLADA = dict(architectures=["LLaDAModelLM"], model_type="llada", d_model=64, n_heads=4, n_kv_heads=4, n_layers=1,
             mlp_hidden_size=128, vocab_size=250, mask_token_id=249)


def _hf_folder(tmp_path: Path, config, tensors: dict | None = None) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tensors is not None:
        save_file(tensors, folder / "model.safetensors")
    return folder


def _without(config: dict, key: str) -> dict:
    return {k: v for k, v in config.items() if k != key}


@pytest.mark.parametrize("config,message", [
    (_without(LLAMA, "hidden_size"), "missing required field 'hidden_size'"),
    (_without(LLAMA, "num_attention_heads"), "missing required field 'num_attention_heads'"),
    (_without(LLADA, "d_model"), "missing required field 'd_model'"),
    (_without(LLADA, "n_heads"), "missing required field 'n_heads'"),
    ({**LLAMA, "hidden_size": None}, "required field 'hidden_size' is null"),
    ({**LLADA, "mlp_hidden_size": None, "mlp_ratio": 2.5, "d_model": 65},
     r"its llada fields give ffn_hidden_size=162.5, which must be a positive integer"),
    ({**LLAMA, "hidden_size": "64"}, "field 'hidden_size' must be a positive integer, got '64'"),
    ({**LLAMA, "num_attention_heads": [4]}, r"field 'num_attention_heads' must be a positive integer, got \[4\]"),
    ({**LLAMA, "intermediate_size": True}, "field 'intermediate_size' must be a positive integer, got True"),
    ({**LLAMA, "num_attention_heads": 0}, "field 'num_attention_heads' must be a positive integer, got 0"),
    ({**LLAMA, "num_hidden_layers": -2}, "field 'num_hidden_layers' must be a positive integer, got -2"),
    ({**LLAMA, "vocab_size": 0}, "field 'vocab_size' must be a positive integer, got 0"),
    ({**LLADA, "d_model": "64"}, "field 'd_model' must be a positive integer, got '64'"),
    ({**LLADA, "n_heads": 0}, "field 'n_heads' must be a positive integer, got 0"),
    ({**LLADA, "n_layers": 2.5}, "field 'n_layers' must be a positive integer, got 2.5"),
    ({**LLAMA, "rope_theta": "big"}, "field 'rope_theta' must be a positive number, got 'big'"),
    ({**LLAMA, "rope_scaling": [8.0]}, r"field 'rope_scaling' must be an object or null, got \[8.0\]"),
    ({**LLAMA, "mask_token_id": "249"}, "field 'mask_token_id' must be a non-negative integer, got '249'"),
    ({**LLAMA, "architectures": 5}, "field 'architectures' must be a list of names, got 5"),
    ({**LLAMA, "hidden_size": 12}, r"head_dim \(3\) must be even"),
])
def test_bad_config_fields_name_the_file_and_field(tmp_path, config, message):
    folder = _hf_folder(tmp_path, config)
    with pytest.raises(ValueError, match=re.escape(str(folder / "config.json")) + ": .*" + message):
        import_hf(folder, tmp_path / "out", **quiet)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,message", [
    ('{"hidden_size": 64,', r"not valid JSON \(.* line 1 column 20\)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("[" * 100000, r"not valid JSON \(nested too deeply\)"),
])
def test_malformed_config_json_names_the_file(tmp_path, text, message):
    folder = _hf_folder(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(str(folder / "config.json")) + ": " + message):
        import_hf(folder, tmp_path / "out", **quiet)


@pytest.mark.parametrize("index,error,message", [
    ('{"weight_map": {', ValueError, r"not valid JSON \(.*\)"),
    ('{"metadata": {}}', ValueError, "'weight_map' must be an object of tensor name -> shard file"),
    ('{"weight_map": {"a": 3}}', ValueError, "'weight_map' must be an object of tensor name -> shard file"),
    ('{"weight_map": {"a": "model-00001-of-00002.safetensors"}}', FileNotFoundError,
     "shard model-00001-of-00002.safetensors of tensor 'a' is missing"),
])
def test_malformed_index_names_the_file(tmp_path, index, error, message):
    folder = _hf_folder(tmp_path, LLAMA)
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(error, match=re.escape(str(folder / "model.safetensors.index.json")) + ": " + message):
        import_hf(folder, tmp_path / "out", **quiet)


class _Unpickled:
    """Creates a marker file if it is ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _valid_bytes(tmp_path) -> bytes:
    save_file({"model.embed_tokens.weight": torch.zeros(250, 64), "model.norm.weight": torch.ones(64)},
              tmp_path / "valid.safetensors")
    return (tmp_path / "valid.safetensors").read_bytes()


@pytest.mark.parametrize("damage,detail", [
    ("pickle", "it looks like a pickle (torch.save) file"),
    ("header", "header"),
    ("data", "file not fully covered"),
    ("empty", "header too small"),
])
def test_pickled_or_truncated_safetensors_name_the_file_and_are_never_unpickled(tmp_path, damage, detail):
    folder = _hf_folder(tmp_path, LLAMA)
    weights, marker = folder / "model.safetensors", tmp_path / "unpickled"
    if damage == "pickle":
        torch.save({"model.embed_tokens.weight": torch.zeros(2), "hook": _Unpickled(marker)}, weights)
    else:
        raw = _valid_bytes(tmp_path)
        weights.write_bytes({"header": raw[:20], "data": raw[:-10], "empty": b""}[damage])
    message = re.escape(str(weights)) + ": not a valid or complete safetensors file .*" + re.escape(detail)
    with pytest.raises(ValueError, match=message):
        import_hf(folder, tmp_path / "out", **quiet)
    assert not marker.exists()


def test_unknown_safetensors_dtype_names_file_tensor_and_dtype(tmp_path):
    folder = _hf_folder(tmp_path, LLAMA, {"model.embed_tokens.weight": torch.zeros(250, 64, dtype=torch.float8_e4m3fn)})
    message = (re.escape(str(folder / "model.safetensors"))
               + ": tensor 'model.embed_tokens.weight' has dtype F8_E4M3, which is "
               r"not supported \(supported: F64, F32, F16, BF16, .*BOOL\)")
    with pytest.raises(ValueError, match=message):
        import_hf(folder, tmp_path / "out", **quiet)


@pytest.mark.parametrize("command", ["import", "roundtrip"])
def test_convert_tool_prints_one_error_line(tmp_path, capsys, command):
    tool = load_tool("convert_checkpoint")
    folder = _hf_folder(tmp_path, _without(LLADA, "d_model"))
    out = ["--out", str(tmp_path / "out")] if command == "import" else []
    assert tool.main([command, "--hf", str(folder), *out]) == 2
    _one_error_line(capsys, str(folder / "config.json"), "missing required field 'd_model'")

    (folder / "config.json").write_text(json.dumps(LLAMA))
    torch.save({"w": torch.zeros(2)}, folder / "model.safetensors")
    assert tool.main([command, "--hf", str(folder), *out]) == 2
    _one_error_line(capsys, str(folder / "model.safetensors"), "not a valid or complete safetensors file")


# --- preprocessing -----------------------------------------------------------------------------

PREPROCESS = dict(family="fast_dllm_v2", max_length=64)


@pytest.fixture(scope="module")
def synthetic_tokenizer(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_input_that_is_a_directory_or_missing_names_it(tmp_path, synthetic_tokenizer):
    with pytest.raises(ValueError, match=re.escape(f"input {tmp_path} is a directory, not a JSONL file")):
        build_preference_dataset(tmp_path, synthetic_tokenizer, output_prefix=tmp_path / "out", **PREPROCESS)
    with pytest.raises(FileNotFoundError, match=re.escape(f"input {tmp_path / 'none.jsonl'} does not exist")):
        build_preference_dataset(tmp_path / "none.jsonl", synthetic_tokenizer, output_prefix=tmp_path / "out",
                                 **PREPROCESS)


@pytest.mark.parametrize("line",
                         ["[" * 100000, '{"prompt": ' + "[" * 100000, '{"prompt": "a", "chosen": ' + '{"a": ' * 100000])
def test_deeply_nested_json_names_file_and_line(tmp_path, synthetic_tokenizer, line):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "count up from 1 :", "chosen": "1 2", "rejected": "1 3"}) + "\n" + line
                    + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{data}:2: malformed JSON: nested too deeply")):
        build_preference_dataset(data, synthetic_tokenizer, output_prefix=tmp_path / "out", **PREPROCESS)


def test_preprocess_tool_prints_one_error_line_with_status_2(tmp_path, synthetic_tokenizer, capsys):
    tool = load_tool("preprocess_data")
    args = ["--tokenizer", str(synthetic_tokenizer), "--family", "fast_dllm_v2", "--output", str(tmp_path / "out"),
            "--max-length", "64"]
    assert tool.main(["--input", str(tmp_path), *args]) == 2
    _one_error_line(capsys, f"input {tmp_path} is a directory")
    assert tool.main(["--input", str(tmp_path / "none.jsonl"), *args]) == 2
    _one_error_line(capsys, f"input {tmp_path / 'none.jsonl'} does not exist")
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "\n")
    assert tool.main(["--input", str(tmp_path / "deep.jsonl"), *args]) == 2
    _one_error_line(capsys, f"{tmp_path / 'deep.jsonl'}:1: malformed JSON: nested too deeply")


# --- generation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, world_of_one):
    """name -> a saved tiny fast_dllm_v2 model: `fits` (vocab 250) and `small_vocab` (vocab 100)."""
    from dtrpo_mega.checkpoint.model import save_model
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for name, vocab in (("fits", 250), ("small_vocab", 100)):
        save_model(build_model(model_config("fast_dllm_v2", vocab_size=vocab, num_layers=1)).eval(), root / name)
    return {name: root / name for name in ("fits", "small_vocab")}


def _generate(checkpoint: Path, tokenizer: Path, *args: str) -> int:
    return load_tool("generate").main(["--ckpt", str(checkpoint), "--tokenizer", str(tokenizer),
                                       "--max-new-tokens", "4", *args])


def test_tokenizer_larger_than_the_model_vocabulary_is_refused_at_build(checkpoints, synthetic_tokenizer, capsys):
    # "99" is token 115 of the 119-token tokenizer: today it silently reads a padding row of the embedding
    assert _generate(checkpoints["small_vocab"], synthetic_tokenizer, "--prompt", "count up from 99 :") == 2
    _one_error_line(capsys, f"tokenizer {synthetic_tokenizer} has 119 tokens, more than the model's vocab_size 100")


def test_prompt_ids_outside_the_vocabulary_name_prompt_and_id(synthetic_tokenizer):
    renderer = PromptRenderer(ChatEncoder(chat_template("fast_dllm_v2"), load_tokenizer(synthetic_tokenizer)),
                              plain=True, vocab_size=100)
    assert max(renderer.ids("count up from 5 :")) < 100
    with pytest.raises(ValueError,
                       match=r"prompt 'count up from 99 :' has token id 115, outside the model's vocabulary of 100"):
        renderer.ids("count up from 99 :")


def test_empty_plain_prompt_is_refused_naming_the_prompt(checkpoints, synthetic_tokenizer, capsys):
    assert _generate(checkpoints["fits"], synthetic_tokenizer, "--plain", "--prompt", "count up from 5 :", "--prompt",
                     "") == 2
    _one_error_line(capsys, "--prompt 2: prompt '' renders to no tokens")
    # a template with a BOS renders an empty plain prompt to [BOS], a usable prompt
    llada = PromptRenderer.for_family("llada", synthetic_tokenizer, plain=True)
    assert llada.ids("") == [llada.encoder.special_ids["<|startoftext|>"]]


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": "count up from 5 :"}', '{"prompt": "a"'], "prompts.jsonl:2: malformed JSON"),
    (['{"text": "count"}'], "prompts.jsonl:1: missing key 'prompt'"),
    (["[" * 100000], "prompts.jsonl:1: malformed JSON: nested too deeply"),
    (['{"prompt": [{"role": "user"}]}'], r"prompts.jsonl:1: prompt\[0\] must be a message"),
    (['{"prompt": 5}'], "prompts.jsonl:1: 'prompt' must be a string or a list of messages, got int"),
])
def test_bad_prompts_file_names_file_and_line(checkpoints, synthetic_tokenizer, tmp_path, capsys, lines, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    assert _generate(checkpoints["fits"], synthetic_tokenizer, "--prompts", str(prompts)) == 2
    line = _one_error_line(capsys, str(prompts))
    assert re.search(message, line), line


def test_good_prompts_file_still_generates(checkpoints, synthetic_tokenizer, tmp_path, capsys):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "traj.jsonl"
    chat = [{"role": "system", "content": "count"}, {"role": "user", "content": "count up from 7 :"}]
    prompts.write_text(json.dumps({"prompt": "count up from 5 :", "id": 1}) + "\n\n"
                       + json.dumps({"prompt": chat}) + "\n")
    assert _generate(checkpoints["fits"], synthetic_tokenizer, "--prompts", str(prompts), "--record-trajectory",
                     str(out)) == 0
    assert "tokens/forward" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["count up from 5 :", chat]
