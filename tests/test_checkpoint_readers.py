"""Every reader of a checkpoint verifies its checksums first: a damaged file (64 bytes flipped in the
middle of a `.distcp`) or a missing manifest is refused, naming the file, by convert export,
generate, evaluate, lm-eval, precompute-reference and resume."""

import re
from pathlib import Path

import pytest

from dtrpo_mega.checkpoint.integrity import MANIFEST
from dtrpo_mega.checkpoint.model import save_model
from dtrpo_mega.config import load_config
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.training.setup import resolve_model_config

DAMAGED = r"\.distcp: sha256 .* when saved \(the file is damaged or was replaced\)"


def _config(data, tmp_path, *extra):
    return load_config(None, [f"data.path={data}", "model.overrides={num_layers: 2}", "train.global_batch_size=2",
                              "train.micro_batch_size=1", "train.train_steps=1", f"checkpoint.dir={tmp_path}/run",
                              f"logging.dir={tmp_path}/log", "logging.progress_bar=false", *extra])


def damage(folder: Path) -> Path:
    """Flip 64 bytes in the middle of the folder's first `.distcp` file; returns that file."""
    shard = sorted(folder.glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    shard.write_bytes(bytes(data))
    return shard


def _saved(counting_data, tmp_path) -> Path:
    """A model checkpoint of the counting data's model."""
    folder = tmp_path / "model"
    save_model(build_model(resolve_model_config(_config(counting_data, tmp_path)), seed=0), folder)
    return folder


@pytest.fixture
def damaged(world_of_one, counting_data, tmp_path) -> Path:
    """A model checkpoint of the counting data's model, one of whose files is damaged."""
    folder = _saved(counting_data, tmp_path)
    damage(folder)
    return folder


def _tokenizer(counting_data) -> str:
    return str(Path(counting_data).parent / "tokenizer.json")


def test_convert_export_refuses_a_damaged_checkpoint(damaged, tmp_path, capsys):
    from dtrpo_mega.convert.cli import main

    assert main(["export", "--ckpt", str(damaged), "--out", str(tmp_path / "hf")]) == 2
    assert re.search(DAMAGED, capsys.readouterr().err)
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
    assert main(["export", "--ckpt", str(damaged), "--out", str(tmp_path / "hf"), "--no-verify"]) == 0


def test_convert_export_refuses_a_checkpoint_without_its_manifest(world_of_one, counting_data, tmp_path):
    from dtrpo_mega.convert import export_hf

    folder = _saved(counting_data, tmp_path)
    (folder / MANIFEST).unlink()
    with pytest.raises(ValueError, match=rf"{folder} has no {MANIFEST}"):
        export_hf(folder, tmp_path / "hf", log=lambda *_: None)


def test_generate_refuses_a_damaged_checkpoint(damaged, counting_data, capsys):
    from dtrpo_mega.eval.generate import main

    prompt = ["--prompt", "count up from 5 :"]
    assert main(["--ckpt", str(damaged), "--tokenizer", _tokenizer(counting_data), *prompt]) == 2
    assert re.search(DAMAGED, capsys.readouterr().err)


def test_evaluate_refuses_a_damaged_checkpoint(damaged, counting_data, tmp_path, capsys):
    from dtrpo_mega.eval.evaluate import main

    task = tmp_path / "task.jsonl"
    task.write_text('{"prompt": "count up from 5 :", "kind": "exact", "answer": "6 7 8 9"}\n')
    assert main(["--ckpt", str(damaged), "--tokenizer", _tokenizer(counting_data), "--tasks", str(task),
                 "--out", str(tmp_path / "results.json")]) == 2
    assert re.search(DAMAGED, capsys.readouterr().err)


def test_lm_eval_model_refuses_a_damaged_checkpoint(damaged, counting_data):
    from dtrpo_mega.eval.lm_eval_model import DtrpoLM

    with pytest.raises(ValueError, match=DAMAGED):
        DtrpoLM(pretrained=str(damaged), tokenizer=_tokenizer(counting_data))


def test_precompute_reference_refuses_a_damaged_checkpoint(damaged, counting_data, tmp_path):
    from dtrpo_mega.training.precompute import precompute

    cfg = _config(counting_data, tmp_path, f"model.load={damaged}")
    with pytest.raises(ValueError, match=DAMAGED):
        precompute(cfg, "sums", str(tmp_path / "ref.safetensors"))
    assert not (tmp_path / "ref.safetensors").exists()


def test_resume_refuses_a_damaged_checkpoint(world_of_one, counting_data, tmp_path):
    from dtrpo_mega.training.loop import train

    train(_config(counting_data, tmp_path, "checkpoint.save_interval=1"))
    latest = (tmp_path / "run" / "latest_checkpointed_iteration.txt").read_text().strip()
    damage(tmp_path / "run" / latest / "model")
    with pytest.raises(ValueError, match=DAMAGED):
        train(_config(counting_data, tmp_path, "train.train_steps=2"))
