"""Load a model for decoding (one process, TP1/PP1) and render prompts for it.

A checkpoint is any of: a model folder (`dtrpo_model.json` + dist checkpoint), a training
checkpoint (`iter_*/` with `model/`), a training root (its latest checkpoint), or a Hugging Face
folder (`config.json`), imported into a temporary folder first.

`training_prompt_format` finds how the prompts of a training checkpoint's data were given (plain
text or chat), so that generation renders prompts as training saw them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dtrpo_mega.checkpoint.model import MODEL_CONFIG_FILE, load_model, read_model_config
from dtrpo_mega.data import ChatEncoder, Message, Tokenizer, load_tokenizer
from dtrpo_mega.data.indexed import paths as dataset_paths
from dtrpo_mega.data.records import Prompt
from dtrpo_mega.data.tokenizer import HF_FILE, SENTENCEPIECE_FILE
from dtrpo_mega.generation.sampler import DecodeConfig, Sampler
from dtrpo_mega.models.dllm import DLLM, build_model
from dtrpo_mega.models.families import chat_template, get_family
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.checkpoint.trainer import latest_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT_FORMATS = ("plain", "chat")


def model_folder(path: str | Path) -> Path:
    """The folder holding `dtrpo_model.json` for a model, training checkpoint or training root."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / MODEL_CONFIG_FILE).is_file():
            return candidate
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / "model"
    raise FileNotFoundError(f"{path}: no {MODEL_CONFIG_FILE} here or in model/, and no training checkpoint tracker")


@dataclass(frozen=True)
class TrainingData:
    """The dataset a training checkpoint was trained on, found through its trainer.json."""

    metadata: dict
    where: str  # "its training data DATA (data.path in TRAINER.json)"
    candidates: tuple[Path, ...]  # where a relative path in the metadata is looked for: cwd, then the launch directory


def training_data(path: str | Path) -> tuple[TrainingData | None, str]:
    """The metadata of the data a training checkpoint was trained on, or (None, why it cannot be known).

    `path` is a training root, a training checkpoint (`iter_*/`) or its `model/` folder: its
    `trainer.json` holds the run's config, whose `data.path` is the dataset. A relative `data.path` is
    looked for from the current directory, then from the directory the run was launched from (see
    `_launch_directory`). Anything else (a model folder born outside training, a Hugging Face folder, a
    dataset moved away) gives None."""
    path = Path(path)
    if (path / "config.json").is_file() and not (path / MODEL_CONFIG_FILE).is_file():
        return None, f"{path} is a Hugging Face folder, not a training checkpoint"
    try:
        folder = model_folder(path)
    except (FileNotFoundError, ValueError) as error:
        return None, str(error)
    trainer = folder.parent / "trainer.json"
    if folder.name != "model" or not trainer.is_file():
        return None, f"{path} is not a training checkpoint (no trainer.json beside its model)"
    try:
        config = json.loads(trainer.read_text(encoding="utf-8"))["config"]
        data_path = config["data"]["path"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{trainer} names no data.path ({type(error).__name__}: {error})"
    if not data_path:
        return None, f"{trainer} names no data.path"
    bases = [Path.cwd()]
    launch_dir = _launch_directory(trainer.parent.parent, config)
    if launch_dir is not None and not Path(data_path).is_absolute():
        bases.append(launch_dir)
    found_at = next((b / data_path for b in bases if dataset_paths(b / data_path)["metadata"].is_file()), None)
    if found_at is None:
        return None, f"its training data {data_path} (data.path in {trainer}) is not found from {Path.cwd()}" + (
            f" nor from {launch_dir}" if len(bases) > 1 else "")
    metadata_file = dataset_paths(found_at)["metadata"]
    try:
        metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"its training data's metadata {metadata_file} is unreadable ({error})"
    if not isinstance(metadata, dict):
        return None, f"its training data's metadata {metadata_file} is not a JSON object"
    shown = Path(data_path) if found_at == bases[0] / data_path else found_at
    return TrainingData(metadata, f"its training data {shown} (data.path in {trainer})", tuple(bases)), ""


def training_prompt_format(path: str | Path) -> tuple[str | None, str]:
    """The prompt format ("plain" or "chat") of the data a training checkpoint was trained on, and
    why: (format, where it was read), or (None, why it cannot be known); see `training_data`."""
    data, why = training_data(path)
    if data is None:
        return None, why
    found = data.metadata.get("prompt_format")
    if found not in PROMPT_FORMATS:
        return (None,
                f"{data.where} was preprocessed before prompt_format was recorded (preprocess it again to record it)")
    return found, f"{data.where} has {found} prompts"


def training_tokenizer(path: str | Path) -> tuple[Path | None, str]:
    """The tokenizer the training data of a checkpoint was made with, if it is still there unchanged:
    (its path, where it was read), or (None, why not); see `training_data`."""
    data, why = training_data(path)
    if data is None:
        return None, why
    recorded = data.metadata.get("tokenizer") or {}
    if not isinstance(recorded, dict) or not recorded.get("path"):
        return None, f"{data.where} records no tokenizer path"
    tokenizer = next((b / recorded["path"] for b in data.candidates if (b / recorded["path"]).exists()), None)
    if tokenizer is None:
        return None, f"the tokenizer {recorded['path']} of {data.where} is not found"
    if recorded.get("sha256") and load_tokenizer(tokenizer).identity != recorded["sha256"]:
        return None, f"the tokenizer {tokenizer} changed since {data.where} was preprocessed"
    return tokenizer, f"the tokenizer of {data.where}"


def choose_tokenizer(path: str | Path, given: str | Path | None = None) -> tuple[Path, str]:
    """(tokenizer, a line saying where it came from): `given`; else one inside the checkpoint's folder (as a
    Hugging Face folder holds it); else the training data's (`training_tokenizer`). Raises ValueError
    naming what was looked for."""
    if given is not None:
        return Path(given), f"tokenizer: {given}"
    path = Path(path)
    if any((path / name).is_file() for name in (HF_FILE, SENTENCEPIECE_FILE)):
        return path, f"tokenizer: the one in {path}"
    found, why = training_tokenizer(path)
    if found is None:
        raise ValueError(f"no tokenizer given, and none found for {path}: it holds no {HF_FILE} or "
                         f"{SENTENCEPIECE_FILE}, and {why}; give one (--tokenizer, or tokenizer= in lm-eval's "
                         "model_args)")
    return found, f"tokenizer: {found}, {why}"


def _launch_directory(root: Path, config: dict) -> Path | None:
    """Where a run was launched from, when its relative checkpoint.dir names the root's last folders
    (`runs/demo/checkpoints` for /home/me/repo/runs/demo/checkpoints: /home/me/repo); else None."""
    ckpt_dir = (config.get("checkpoint") or {}).get("dir") if isinstance(config, dict) else None
    if not ckpt_dir or Path(ckpt_dir).is_absolute():
        return None
    parts = Path(os.path.normpath(ckpt_dir)).parts
    root_parts = root.resolve().parts
    if ".." in parts or len(parts) >= len(root_parts) or root_parts[-len(parts):] != parts:
        return None
    return Path(*root_parts[: -len(parts)])


def choose_prompt_format(path: str | Path, plain: bool = False, chat: bool = False) -> tuple[str, str]:
    """(format, a line saying why): --plain or --chat if given, else the training data's, else chat."""
    if plain and chat:
        raise ValueError("--plain and --chat exclude each other")
    if plain or chat:
        chosen = "plain" if plain else "chat"
        return chosen, f"prompt format: {chosen} (--{chosen})"
    found, why = training_prompt_format(path)
    if found is None:
        return "chat", f"prompt format: chat, the default: {why}; --plain renders text prompts as plain text"
    return found, f"prompt format: {found}, as {why}; --{'chat' if found == 'plain' else 'plain'} overrides it"


def load_for_decoding(path: str | Path, dtype: str = "fp32", **import_options) -> DLLM:
    """The model of a dtrpo or Hugging Face checkpoint, in eval mode, on the current device.

    `import_options` go to `dtrpo_mega.convert.import_hf` (e.g. mask_token_id, dllm_family)."""
    initialize(ParallelConfig())
    path = Path(path)
    if (path / "config.json").is_file() and not (path / MODEL_CONFIG_FILE).is_file():
        from dtrpo_mega.convert import import_hf

        with tempfile.TemporaryDirectory(prefix="dtrpo_import_") as tmp:
            import_hf(path, Path(tmp) / "model", **import_options)
            return _load(Path(tmp) / "model", dtype)
    return _load(model_folder(path), dtype)


def family_sampler(model: DLLM, decode: DecodeConfig) -> Sampler:
    """A Sampler for a loaded model, stopping where its family's own decoder stops."""
    cfg = model.dllm_config
    decode = dataclasses.replace(decode, stop_at_end_of_turn=get_family(cfg.family).stops_at_end_of_turn)
    return Sampler(model, cfg.diffusion, cfg.vocab_size, decode, next(model.parameters()).device)


def _load(folder: Path, dtype: str) -> DLLM:
    model = build_model(read_model_config(folder), params_dtype=DTYPES[dtype])
    load_model(model, folder)
    return model.eval()


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, model: str | Path) -> None:
    """Refuse a tokenizer whose vocabulary (added tokens included) is larger than the model's:
    its ids past the model's vocabulary would index padding rows, or past the embedding."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, more than the model's "
                         f"vocab_size {vocab_size} ({model}): is it this model's tokenizer?")


def _shown(prompt: Prompt) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1].content
    return repr(text if len(text) <= 60 else text[:57] + "...")


@dataclass
class PromptRenderer:
    """Chat rendering of prompts for a model family; a text prompt is one user turn unless plain.

    A prompt must render to at least one token (a shifted-logits family predicts its first response
    token from the last prompt token; an empty plain prompt renders to nothing unless the template
    starts with a BOS), and, given the model's `vocab_size`, only to ids inside it."""

    encoder: ChatEncoder
    plain: bool = False
    vocab_size: int | None = None  # the model's; None: not checked

    @classmethod
    def for_family(cls, family: str, tokenizer: Tokenizer | str | Path, plain: bool = False,
                   vocab_size: int | None = None) -> "PromptRenderer":
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        return cls(ChatEncoder(chat_template(family), tok), plain, vocab_size)

    @property
    def end_of_turn_id(self) -> int:
        return self.encoder.end_of_turn_id

    def ids(self, prompt: Prompt) -> list[int]:
        rendered = (Message("user", prompt),) if isinstance(prompt, str) and not self.plain else prompt
        ids = self.encoder.prompt(rendered)
        if not ids:
            raise ValueError(f"prompt {_shown(prompt)} renders to no tokens (plain text, and the "
                             f"{self.encoder.template.name} template has no BOS): a prompt needs at least one token")
        if self.vocab_size is not None and max(ids) >= self.vocab_size:
            raise ValueError(f"prompt {_shown(prompt)} has token id {max(ids)}, outside the model's vocabulary of "
                             f"{self.vocab_size}")
        return ids

    def text(self, response: list[int]) -> str:
        """The response's text, without its end-of-turn token."""
        if response and response[-1] == self.end_of_turn_id:
            response = response[:-1]
        return self.encoder.tokenizer.decode(response)
