"""Load a model for decoding (one process, TP1/PP1) and render prompts for it.

A checkpoint is any of: a model folder (`dtrpo_model.json` + dist checkpoint), a training
checkpoint (`iter_*/` with `model/`), a training root (its latest checkpoint), or a Hugging Face
folder (`config.json`), imported into a temporary folder first.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dtrpo_mega.checkpointing import MODEL_CONFIG_FILE, load_model, read_model_config
from dtrpo_mega.data import ChatEncoder, Message, Tokenizer, load_tokenizer
from dtrpo_mega.data.records import Prompt
from dtrpo_mega.diffusion.sampler import DecodeConfig, Sampler
from dtrpo_mega.models.dllm import DLLM, build_model
from dtrpo_mega.models.families import chat_template, get_family
from dtrpo_mega.parallel.runtime import ParallelConfig, initialize
from dtrpo_mega.training.checkpoint import latest_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                         f"{vocab_size} ({model}): is it this model's tokenizer?")


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
            raise ValueError(f"prompt {_shown(prompt)} renders to no tokens (plain text, and the {self.encoder.template.name} "
                             "template has no BOS): a prompt needs at least one token")
        if self.vocab_size is not None and max(ids) >= self.vocab_size:
            raise ValueError(f"prompt {_shown(prompt)} has token id {max(ids)}, outside the model's vocabulary of {self.vocab_size}")
        return ids

    def text(self, response: list[int]) -> str:
        """The response's text, without its end-of-turn token."""
        if response and response[-1] == self.end_of_turn_id:
            response = response[:-1]
        return self.encoder.tokenizer.decode(response)
