"""Checkpoints cross megatron-core versions: one saved with megatron-core 0.16.1 (Python 3.11 stack)
and one saved with 0.19.2 (the NGC stack), committed under tests/data/dist_checkpoints, load on the
running stack bit for bit, and export to Hugging Face exactly as a checkpoint saved here does.

Each folder holds what `save_model` wrote, `weights.safetensors` (the same weights, read without
megatron) and `written_by.json`. To add the running stack's: `python tests/test_checkpoint_versions.py`.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dtrpo_mega.checkpoint.integrity import write_manifest
from dtrpo_mega.checkpoint.model import load_model, read_model_config, save_model
from dtrpo_mega.compat import CHECKED_MEGATRON_CORE_VERSIONS, megatron_core_version
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config

FIXTURES = Path(__file__).resolve().parent / "data" / "dist_checkpoints"


def fixture(version: str) -> Path:
    return FIXTURES / f"megatron-core-{version}"


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


@pytest.mark.parametrize("version", CHECKED_MEGATRON_CORE_VERSIONS)
def test_a_checkpoint_of_each_tested_version_loads_bit_exactly(world_of_one, version):
    folder = fixture(version)
    written_by = json.loads((folder / "written_by.json").read_text())
    assert written_by["megatron_core"] == version
    model = build_model(read_model_config(folder), seed=written_by["seed"] + 1)  # other weights until loaded
    load_model(model, folder)  # checksums verified first
    expected = load_file(folder / "weights.safetensors")
    loaded = _weights(model)
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name


@pytest.mark.parametrize("version", CHECKED_MEGATRON_CORE_VERSIONS)
def test_a_checkpoint_of_each_tested_version_exports_as_one_saved_here(world_of_one, tmp_path, version):
    from dtrpo_mega.convert import export_hf

    folder = fixture(version)
    model = build_model(read_model_config(folder))
    load_model(model, folder)
    save_model(model, tmp_path / "here")
    quiet = dict(log=lambda *_: None)
    theirs = export_hf(folder, tmp_path / "hf_theirs", **quiet)
    ours = export_hf(tmp_path / "here", tmp_path / "hf_ours", **quiet)
    a = {k: v for f in sorted(theirs.glob("*.safetensors")) for k, v in load_file(f).items()}
    b = {k: v for f in sorted(ours.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (theirs / "config.json").read_text() == (ours / "config.json").read_text()


def write_fixture(seed: int = 0) -> Path:
    """Save the running stack's fixture (one process)."""
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    initialize(ParallelConfig(), seed=seed)
    folder = fixture(megatron_core_version())
    if folder.exists():
        raise FileExistsError(f"{folder} exists; remove it to write it again")
    model = build_model(model_config("fast_dllm_v2", num_layers=2), seed=seed)
    save_model(model, folder)
    save_file(_weights(model), folder / "weights.safetensors")
    (folder / "written_by.json").write_text(json.dumps(
        {"megatron_core": megatron_core_version(), "torch": torch.__version__, "seed": seed}, indent=1) + "\n")
    write_manifest(folder)  # again, now covering the two files above
    return folder


if __name__ == "__main__":
    print(write_fixture())
