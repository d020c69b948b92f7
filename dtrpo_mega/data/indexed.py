"""The memory-mapped indexed dataset of tokenized preference pairs or prompt-completion examples.

A prompt-completion example is stored as a pair whose chosen response is the completion and whose
rejected response is empty. Files under one prefix:
- `PREFIX.bin`: every pair's prompt, chosen and rejected token ids, back to back (int32);
- `PREFIX.idx.npy`: int64 `[num_pairs, 4]`, pair i's boundaries in `.bin`: prompt start,
  chosen start, rejected start, end;
- `PREFIX.steps.bin` (datasets with `logged` trajectories): int32 aligned with `.bin`, the reveal
  step of each response token, -1 at prompt positions;
- `PREFIX.json`: metadata (fingerprint, kind, prompt_format, settings, tokenizer, counts, sizes);
  `kind` is "preference" or "completion" (absent in older datasets: "preference"), `prompt_format`
  "plain" or "chat" (absent in older datasets: unknown).
Files are written under temporary names and renamed into place, metadata last, so a prefix
either holds a complete dataset or no metadata.
"""

from __future__ import annotations

import json
import operator
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "dtrpo_mega.preference.v1"
TOKEN_DTYPE = np.dtype("<i4")
REQUIRED = {"fingerprint", "num_pairs", "num_tokens", "has_steps", "settings", "tokenizer", "counts"}
SUFFIXES = {"tokens": ".bin", "index": ".idx.npy", "steps": ".steps.bin", "metadata": ".json"}


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class PreferencePair:
    """One tokenized example; responses end with the end-of-turn token unless they were truncated.

    A prompt-completion example's completion is `chosen`; its `rejected` is empty.
    """

    index: int  # global sample index in the dataset (0..N-1)
    prompt: np.ndarray  # int64, the rendered prompt including the assistant header
    chosen: np.ndarray  # int64
    rejected: np.ndarray  # int64, empty for a prompt-completion example
    chosen_steps: np.ndarray | None = None  # int64 reveal step per chosen token (`logged` mode)
    rejected_steps: np.ndarray | None = None


def paths(prefix: str | Path) -> dict[str, Path]:
    return {name: Path(f"{prefix}{suffix}") for name, suffix in SUFFIXES.items()}


class IndexedWriter:
    """Streams examples to temporary files; `commit` moves them into place, metadata last."""

    def __init__(self, prefix: str | Path):
        self.paths = paths(prefix)
        self.paths["tokens"].parent.mkdir(parents=True, exist_ok=True)
        self._tmp: dict[str, Path] = {}
        self._files = {name: self._open(name) for name in ("tokens", "steps")}
        self._bounds: list[tuple[int, int, int, int]] = []
        self._size = 0
        self.has_steps: bool | None = None  # decided by the first pair

    def _open(self, name: str):
        final = self.paths[name]
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
        self._tmp[name] = tmp
        return open(tmp, "xb")

    def add(self, pair: PreferencePair) -> None:
        if self.has_steps is None:
            self.has_steps = pair.chosen_steps is not None
        parts = (pair.prompt, pair.chosen, pair.rejected)
        start = self._size
        ends = np.cumsum([len(p) for p in parts]) + start
        self._bounds.append((start, int(ends[0]), int(ends[1]), int(ends[2])))
        self._size = int(ends[2])
        self._files["tokens"].write(np.concatenate(parts).astype(TOKEN_DTYPE).tobytes())
        if self.has_steps:
            steps = (np.full(len(pair.prompt), -1), pair.chosen_steps, pair.rejected_steps)
            self._files["steps"].write(np.concatenate(steps).astype(TOKEN_DTYPE).tobytes())

    def __len__(self) -> int:
        return len(self._bounds)

    def commit(self, metadata: dict) -> None:
        """Finish the files, add the layout to `metadata`, and rename everything into place."""
        metadata = {**metadata, "format": FORMAT, "num_pairs": len(self), "num_tokens": self._size,
                    "token_dtype": TOKEN_DTYPE.name, "has_steps": bool(self.has_steps)}
        self._files["index"] = self._open("index")
        np.save(self._files["index"], np.asarray(self._bounds, dtype=np.int64).reshape(-1, 4))
        self._files["metadata"] = self._open("metadata")
        self._files["metadata"].write(json.dumps(metadata, indent=2, sort_keys=True).encode())
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        if not self.has_steps:
            self._tmp.pop("steps").unlink()
            self.paths["steps"].unlink(missing_ok=True)
        self.paths["metadata"].unlink(missing_ok=True)  # an interrupted commit leaves no metadata
        for name, tmp in list(self._tmp.items()):  # metadata was opened last: renamed last
            tmp.replace(self.paths[name])
            del self._tmp[name]

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)


class PreferenceDataset:
    """Examples read lazily from the memory-mapped files of a prefix; see `open`."""

    def __init__(self, prefix: Path, metadata: dict, tokens: np.memmap, bounds: np.memmap, steps: np.memmap | None):
        self.prefix, self.metadata = prefix, metadata
        self.tokens, self.bounds, self.steps = tokens, bounds, steps

    @classmethod
    def open(cls, prefix: str | Path) -> PreferenceDataset:
        """Open and validate a prefix written by `dtrpo preprocess`."""
        files = paths(prefix)
        meta_file = files["metadata"]
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: no preprocessed dataset at prefix {prefix} "
                                    "(write one with `dtrpo preprocess`)")
        try:
            metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_file}: corrupt metadata ({err})") from None
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or not metadata.keys() >= REQUIRED:
            raise ValueError(f"{meta_file}: not {FORMAT} metadata with {sorted(REQUIRED)}")
        n, size = metadata["num_pairs"], metadata["num_tokens"]
        tokens = _map(files["tokens"], size)
        steps = _map(files["steps"], size) if metadata["has_steps"] else None
        bounds = _load_bounds(files["index"], n, size)
        return cls(Path(prefix), metadata, tokens, bounds, steps)

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    @property
    def kind(self) -> str:
        """What the examples are: "preference" pairs or "completion" (prompt-completion, `rejected` empty)."""
        return self.metadata.get("kind", "preference")

    @property
    def prompt_format(self) -> str | None:
        """How the prompts were given: "plain" text or "chat" messages; None for datasets written before it
        was recorded."""
        return self.metadata.get("prompt_format")

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, i: int) -> PreferencePair:
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} is out of range for {len(self)} pairs in {self.prefix}")
        i %= len(self)
        a, b, c, d = (int(x) for x in self.bounds[i])
        tokens = np.asarray(self.tokens[a:d], dtype=np.int64)
        steps = None if self.steps is None else np.asarray(self.steps[a:d], dtype=np.int64)
        return PreferencePair(
            index=i, prompt=tokens[: b - a], chosen=tokens[b - a : c - a], rejected=tokens[c - a :],
            chosen_steps=None if steps is None else steps[b - a : c - a],
            rejected_steps=None if steps is None else steps[c - a :],
        )

    def __reduce__(self):
        """Pickle as the prefix (data-loader workers reopen the maps instead of copying them)."""
        return type(self).open, (str(self.prefix),)


def _map(file: Path, size: int) -> np.memmap:
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the dataset's files are incomplete")
    actual = file.stat().st_size
    if actual != size * TOKEN_DTYPE.itemsize:
        raise ValueError(f"{file}: {actual} bytes, expected {size} tokens x {TOKEN_DTYPE.itemsize} bytes "
                         "(truncated, or from another preprocessing run)")
    return np.memmap(file, dtype=TOKEN_DTYPE, mode="r", shape=(size,))


def _load_bounds(file: Path, n: int, size: int) -> np.memmap:
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the dataset's files are incomplete")
    try:
        bounds = np.load(file, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{file}: corrupt index ({err})") from None
    flat = bounds.reshape(-1) if bounds.dtype == np.int64 and bounds.shape == (n, 4) and n > 0 else None
    if flat is None or flat[0] != 0 or flat[-1] != size or np.any(np.diff(flat) < 0):
        raise ValueError(f"{file}: corrupt index (expected int64 [{n}, 4] boundaries from 0 to {size})")
    return bounds
