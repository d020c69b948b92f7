"""Keyed safetensors files: tensors stored with the key (a JSON dict) of everything that made them.

A reader states the key its run expects; a file made under another key is refused with every
differing field named. Used by the precomputed reference sums and the reference confidences.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_keyed(path: str | Path, tensors: dict[str, torch.Tensor], key: dict) -> None:
    """safetensors file with the key that made it, written atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"key": json.dumps(key, sort_keys=True)})
    tmp.replace(path)


def load_keyed(path: str | Path, expected_key: dict, what: str) -> dict[str, torch.Tensor]:
    """The file's tensors, or an error naming every key field that differs from this run's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; write it with tools/precompute_reference.py")
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["key"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    expected = json.loads(json.dumps(expected_key, sort_keys=True))
    differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    if differing:
        details = "; ".join(f"{k}: file {stored.get(k)!r} vs run {expected.get(k)!r}" for k in differing)
        raise ValueError(f"{what} {path} was made for a different run ({details})")
    return tensors
