"""The `dtrpo` command: subcommands, their help, the tools/*.py wrappers, and the prompt format
(plain or chat) that generation takes from the training data."""

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, patient
from dtrpo_mega import cli
from dtrpo_mega.data import PreferenceDataset, build_preference_dataset
from dtrpo_mega.data.synthetic import prepare_counting_dataset
from dtrpo_mega.generation.model import choose_prompt_format, choose_tokenizer, training_prompt_format
from dtrpo_mega.data.synthetic import write_tokenizer

COMMANDS = ["train", "preprocess", "precompute-reference", "convert", "generate", "evaluate", "lm-eval", "demo"]
TOOLS = {"train": "train", "preprocess": "preprocess_data", "precompute-reference": "precompute_reference",
         "convert": "convert_checkpoint", "generate": "generate", "evaluate": "evaluate", "demo": "demo"}
SCRIPT = Path(sys.executable).parent / "dtrpo"  # the console script of `pip install` (-e .)


def _dtrpo() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "dtrpo_mega.cli"]


# --- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [_dtrpo(), [sys.executable, "-m", "dtrpo_mega.cli"]], ids=["dtrpo", "python-m"])
def test_help_lists_every_subcommand(command):
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=patient(120), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: dtrpo ")
    listed = re.findall(r"^    (\S+)", proc.stdout.split("commands:")[1].split("examples:")[0], re.MULTILINE)
    assert listed == COMMANDS == list(cli.COMMANDS)


def test_console_script_is_installed():
    if not SCRIPT.is_file():
        pytest.skip(f"no {SCRIPT}: reinstall the package (pip install -e .) to make the `dtrpo` command")
    assert "dtrpo_mega.cli" in SCRIPT.read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    usage = "usage: lm-eval " if command == "lm-eval" else f"usage: dtrpo {command} "  # lm-eval's own command line
    assert capsys.readouterr().out.startswith(usage)


def test_no_or_unknown_command_is_a_usage_error(capsys):
    for argv in ([], ["trian"]):
        with pytest.raises(SystemExit) as exit:
            cli.main(argv)
        assert exit.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", TOOLS)
def test_tools_run_the_same_functions(command):
    spec = importlib.util.spec_from_file_location(f"tool_{TOOLS[command]}", REPO / "tools" / f"{TOOLS[command]}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # the entry point is guarded: importing runs nothing
    assert tool.main is importlib.import_module(cli.COMMANDS[command][0]).main


# --- preprocessing records the prompt format ----------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


PLAIN = {"prompt": "count up from 1 :", "chosen": "1 2 3", "rejected": "1 2 4"}
CHAT = {"prompt": [{"role": "user", "content": "count up from 1 :"}],
        "chosen": [{"role": "assistant", "content": "1 2 3"}], "rejected": [{"role": "assistant", "content": "1 2 4"}]}


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_preprocess_records_the_prompt_format(tmp_path, tokenizer, capsys):
    data = _jsonl(tmp_path / "plain.jsonl", [PLAIN, PLAIN])
    assert cli.main(["preprocess", "--input", str(data), "--tokenizer", str(tokenizer), "--family", "fast_dllm_v2",
                     "--output", str(tmp_path / "plain"), "--max-length", "64"]) == 0
    assert "2 preference examples with plain prompts" in capsys.readouterr().out
    dataset = PreferenceDataset.open(tmp_path / "plain")
    assert dataset.prompt_format == dataset.metadata["prompt_format"] == "plain"
    build_preference_dataset(_jsonl(tmp_path / "chat.jsonl", [CHAT]), tokenizer, "fast_dllm_v2", tmp_path / "chat", 64)
    assert PreferenceDataset.open(tmp_path / "chat").prompt_format == "chat"


@pytest.mark.parametrize("records,line,this,first", [
    ([PLAIN, PLAIN, CHAT], 3, "a chat prompt (a list of messages)", "a plain-text prompt"),
    ([CHAT, PLAIN], 2, "a plain-text prompt", "a chat prompt (a list of messages)"),
], ids=["plain-then-chat", "chat-then-plain"])
def test_a_file_mixing_plain_and_chat_prompts_is_refused(tmp_path, tokenizer, records, line, this, first):
    data = _jsonl(tmp_path / "mixed.jsonl", records)
    message = (f"{data}:{line}: {this} but the first record ({data}:1) has {first}: a file holds plain-text or chat "
               "prompts, not both")
    with pytest.raises(ValueError, match=re.escape(message)):
        build_preference_dataset(data, tokenizer, "fast_dllm_v2", tmp_path / "out", 64)
    assert not (tmp_path / "out.json").exists()


# --- where generation finds the prompt format ----------------------------------------------------


def _training_checkpoint(root: Path, data_path: str, checkpoint_dir: str | None = None) -> Path:
    """A training root's files that the prompt format is read from (no weights)."""
    (root / "iter_0000001" / "model").mkdir(parents=True)
    (root / "iter_0000001" / "model" / "dtrpo_model.json").write_text("{}")
    config = {"data": {"path": data_path}, "checkpoint": {"dir": checkpoint_dir or str(root)}}
    (root / "iter_0000001" / "trainer.json").write_text(json.dumps({"step": 1, "config": config}))
    (root / "latest_checkpointed_iteration.txt").write_text("iter_0000001\n")
    return root


def test_prompt_format_comes_from_the_training_data(tmp_path, counting_data):
    root = _training_checkpoint(tmp_path / "ckpt", counting_data)
    for path in (root, root / "iter_0000001", root / "iter_0000001" / "model"):
        found, why = training_prompt_format(path)
        assert found == "plain" and counting_data in why and "trainer.json" in why
    assert choose_prompt_format(root) == ("plain", f"prompt format: plain, as {why}; --chat overrides it")
    assert choose_prompt_format(root, chat=True) == ("chat", "prompt format: chat (--chat)")
    assert choose_prompt_format(tmp_path, plain=True)[0] == "plain"


def test_relative_data_path_is_found_from_where_the_run_was_launched(tmp_path, counting_data, monkeypatch):
    launched = tmp_path / "repo"
    (launched / "data").mkdir(parents=True)
    for file in Path(counting_data).parent.glob(Path(counting_data).name + ".*"):
        (launched / "data" / file.name).symlink_to(file)
    root = _training_checkpoint(launched / "runs" / "ckpt", f"data/{Path(counting_data).name}",
                                checkpoint_dir="runs/ckpt")
    monkeypatch.chdir(launched)
    assert training_prompt_format("runs/ckpt")[0] == "plain"
    monkeypatch.chdir(tmp_path)
    found, why = training_prompt_format(root)
    assert found == "plain" and str(launched.resolve() / "data") in why


def test_prompt_format_falls_back_to_chat_and_says_why(tmp_path, counting_data):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "dtrpo_model.json").write_text("{}")
    fmt, why = choose_prompt_format(tmp_path / "model")
    assert fmt == "chat" and "not a training checkpoint (no trainer.json" in why and "--plain" in why

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert "is a Hugging Face folder" in choose_prompt_format(tmp_path / "hf")[1]

    assert "is not found from" in choose_prompt_format(_training_checkpoint(tmp_path / "gone",
                                                                            str(tmp_path / "none")))[1]

    old = tmp_path / "old"  # a dataset written before prompt_format was recorded
    for file in Path(counting_data).parent.glob(Path(counting_data).name + ".*"):
        (tmp_path / (old.name + file.name[len(Path(counting_data).name):])).write_bytes(file.read_bytes())
    metadata = json.loads(old.with_suffix(".json").read_text())
    del metadata["prompt_format"]
    old.with_suffix(".json").write_text(json.dumps(metadata))
    fmt, why = choose_prompt_format(_training_checkpoint(tmp_path / "ckpt", str(old)))
    assert fmt == "chat" and "preprocessed before prompt_format was recorded" in why


def test_tokenizer_comes_from_the_training_data_unless_changed(tmp_path):
    data = prepare_counting_dataset(tmp_path / "data" / "pairs", num_pairs=4)
    tokenizer = tmp_path / "data" / "tokenizer.json"
    root = _training_checkpoint(tmp_path / "ckpt", data)
    found, why = choose_tokenizer(root)
    assert found == tokenizer and why == f"tokenizer: {tokenizer}, the tokenizer of its training data {data} " \
        f"(data.path in {root / 'iter_0000001' / 'trainer.json'})"
    assert choose_tokenizer(root, "given.json") == (Path("given.json"), "tokenizer: given.json")
    tokenizer.write_text(tokenizer.read_text() + "\n")  # another tokenizer under the recorded name
    with pytest.raises(ValueError,
                       match=f"the tokenizer {tokenizer} changed since its training data .* was preprocessed"):
        choose_tokenizer(root)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "dtrpo_model.json").write_text("{}")
    with pytest.raises(ValueError,
                       match="holds no tokenizer.json or tokenizer.model, and .* is not a training checkpoint"):
        choose_tokenizer(tmp_path / "bare")


# --- a trained checkpoint --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(world_of_one, counting_data, tmp_path_factory) -> Path:
    """A training root: one dTRPO step of a 2-layer model on the (plain-text) counting data."""
    from dtrpo_mega.config import load_config
    from dtrpo_mega.training.loop import train

    root = tmp_path_factory.mktemp("trained")
    train(load_config(None, [f"data.path={counting_data}", "model.overrides={num_layers: 2}",
                             "train.global_batch_size=4", "train.train_steps=1", f"checkpoint.dir={root}/ckpt",
                             "checkpoint.save_interval=1", f"logging.dir={root}", "logging.progress_bar=false"]))
    return root / "ckpt"


def _decoder(*args: str):
    from dtrpo_mega.eval.cli import add_decoder_options, build_decoder

    parser = argparse.ArgumentParser()
    add_decoder_options(parser)
    return build_decoder(parser.parse_args(list(args)))


def test_generate_renders_prompts_as_the_training_data_did(trained, counting_data, tmp_path, capsys):
    capsys.readouterr()
    tokenizer = str(Path(counting_data).parent / "tokenizer.json")
    first = json.loads(Path(f"{counting_data}.jsonl").read_text().splitlines()[0])
    trained_on = PreferenceDataset.open(counting_data)[0].prompt.tolist()

    decoder = _decoder("--ckpt", str(trained), "--tokenizer", tokenizer)
    assert decoder.prompt_format == "plain" and decoder.renderer.ids(first["prompt"]) == trained_on
    assert capsys.readouterr().out.startswith("prompt format: plain, as its training data")
    chat = _decoder("--ckpt", str(trained), "--tokenizer", tokenizer, "--chat")
    assert chat.prompt_format == "chat" and chat.renderer.ids(first["prompt"]) != trained_on
    assert "prompt format: chat (--chat)" in capsys.readouterr().out

    out = tmp_path / "traj.jsonl"
    assert cli.main(["generate", "--ckpt", str(trained), "--tokenizer", tokenizer, "--prompt", first["prompt"],
                     "--max-new-tokens", "4", "--record-trajectory", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prompt format: plain") and "tokens/forward" in printed
    assert json.loads(out.read_text())["prompt"] == first["prompt"]
    assert cli.main(["generate", "--ckpt", str(trained), "--tokenizer", tokenizer, "--prompt", "count up from 5 :",
                     "--max-new-tokens", "4", "--chat"]) == 0
    assert capsys.readouterr().out.startswith("prompt format: chat (--chat)")


@pytest.mark.slow
def test_dtrpo_train_runs_one_process_and_generate_needs_no_flag(counting_data, tmp_path):
    """`dtrpo train` as `python -m dtrpo_mega.train` (a world of one); then `dtrpo generate` from elsewhere."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run([*_dtrpo(), "train", f"data.path={counting_data}", "model.overrides={num_layers: 2}",
                            "train.global_batch_size=4", "train.train_steps=2", f"checkpoint.dir={tmp_path}/ckpt",
                            "checkpoint.save_interval=2", f"logging.dir={tmp_path}", "logging.progress_bar=false"],
                           capture_output=True, text=True, timeout=patient(600), cwd=REPO, env=env)
    assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
    assert "summary over 2 steps" in train.stdout
    generate = subprocess.run([*_dtrpo(), "generate", "--ckpt", str(tmp_path / "ckpt"), "--tokenizer",
                               str(Path(counting_data).parent / "tokenizer.json"), "--prompt", "count up from 5 :",
                               "--max-new-tokens", "4"], capture_output=True, text=True, timeout=patient(600),
                              cwd=tmp_path, env=env)
    assert generate.returncode == 0, generate.stderr[-4000:]
    assert generate.stdout.startswith("prompt format: plain, as its training data")
