"""Tokenizers the data pipeline reads: a SentencePiece model file or a Hugging Face `tokenizer.json`.

Both give the same small interface (`Tokenizer`). `encode` never adds BOS/EOS by itself: chat
templates place every special token explicitly. Text is always text: the Hugging Face tokenizer
encodes the spelling of a special token inside a message as plain characters, so data cannot
inject `<|im_end|>` or the mask token (SentencePiece user-defined symbols are matched in text;
declare chat markers as control symbols to get the same guarantee).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import sentencepiece
import tokenizers

HF_FILE = "tokenizer.json"
HF_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"


class Tokenizer(ABC):
    """What preprocessing needs from a tokenizer."""

    kind: str  # "sentencepiece" or "huggingface"
    path: Path
    vocab_size: int  # one more than the largest token id
    chat_template: str | None  # the tokenizer's own template text, when it ships one
    special_ids: dict[str, int]  # bos / eos / pad / unk, where the tokenizer names them
    identity: str  # sha256 hex of the tokenizer's files: the tokenizer's part of the data fingerprint

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    def describe(self) -> dict:
        """The tokenizer's entry in a dataset's metadata."""
        return dict(kind=self.kind, path=str(self.path), vocab_size=self.vocab_size, sha256=self.identity,
                    special_ids=self.special_ids)


def _sha256(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: Path):
        self.path = path
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"tokenizer {path}: not a readable SentencePiece model ({err})") from None
        self.vocab_size = self._sp.get_piece_size()
        self.chat_template = None
        named = dict(bos=self._sp.bos_id(), eos=self._sp.eos_id(), pad=self._sp.pad_id(), unk=self._sp.unk_id())
        self.special_ids = {name: i for name, i in named.items() if i >= 0}
        self.identity = _sha256(path)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None


class HuggingFaceTokenizer(Tokenizer):
    kind = "huggingface"

    def __init__(self, path: Path):
        self.path = path
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises plain Exception for unreadable files
            raise ValueError(f"tokenizer {path}: not a readable {HF_FILE} ({err})") from None
        self._tok.encode_special_tokens = True
        self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
        config_file = path.parent / HF_CONFIG
        config = _read_config(config_file) if config_file.is_file() else {}
        self.chat_template = _default_template(config.get("chat_template"))
        names = {name: _token_text(config.get(f"{name}_token")) for name in ("bos", "eos", "pad", "unk")}
        ids = {name: self.token_to_id(text) for name, text in names.items() if text}
        self.special_ids = {name: i for name, i in ids.items() if i is not None}
        self.identity = _sha256(path, *([config_file] if config_file.is_file() else []))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def _read_config(file: Path) -> dict:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return config


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken object."""
    return value.get("content") if isinstance(value, dict) else value


def _default_template(value) -> str | None:
    """`chat_template` is a string, or a list of named templates of which we read 'default'."""
    if isinstance(value, list):
        return next((t.get("template") for t in value if t.get("name") == "default"), None)
    return value


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece `.model` file, a `tokenizer.json`, or a directory holding one of them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {path} does not exist")
    if path.is_dir():
        for name, cls in ((HF_FILE, HuggingFaceTokenizer), (SENTENCEPIECE_FILE, SentencePieceTokenizer)):
            if (path / name).is_file():
                return cls(path / name)
        raise ValueError(f"tokenizer directory {path} holds neither {HF_FILE} nor {SENTENCEPIECE_FILE}")
    return HuggingFaceTokenizer(path) if path.suffix == ".json" else SentencePieceTokenizer(path)
