"""HF -> megatron -> HF, compared tensor by tensor, bit for bit."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dtrpo_mega.convert.exporter import export_hf
from dtrpo_mega.convert.hf_io import HFCheckpoint, TensorInfo
from dtrpo_mega.convert.importer import import_hf


@dataclass(frozen=True)
class Row:
    name: str
    source: TensorInfo | None  # None: missing from the source
    result: TensorInfo | None  # None: missing from the result
    match: bool

    def __str__(self) -> str:
        info = self.source or self.result
        status = ("match" if self.match else "MISSING" if self.result is None else "EXTRA" if self.source is None
                  else "MISMATCH")
        other = ("" if self.match or None in (self.source, self.result)
                 else f"  (result {self.result.shape} {self.result.dtype})")
        return f"{self.name:<60} {str(info.shape):<20} {str(info.dtype).removeprefix('torch.'):<9} {status}{other}"


def bits_equal(a: Tensor, b: Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def compare_folders(source_dir: str | Path, result_dir: str | Path) -> tuple[list[Row], bool]:
    """One row per tensor of either folder, and whether the config.json files are equal."""
    source, result = HFCheckpoint(source_dir), HFCheckpoint(result_dir)
    rows = []
    for name in sorted(set(source.tensors) | set(result.tensors)):
        a, b = source.tensors.get(name), result.tensors.get(name)
        match = a is not None and b is not None and bits_equal(source.read(name), result.read(name))
        rows.append(Row(name, a, b, match))
    return rows, json.dumps(source.config, sort_keys=True) == json.dumps(result.config, sort_keys=True)


def roundtrip(hf_dir: str | Path, work_dir: str | Path | None = None, log=print,
              **import_options) -> tuple[list[Row], bool]:
    """Import then export into `work_dir` (a temporary folder when None), then compare."""
    with tempfile.TemporaryDirectory(prefix="dtrpo_roundtrip_") as tmp:
        work = Path(work_dir or tmp)
        import_hf(hf_dir, work / "megatron", log=log, **import_options)
        export_hf(work / "megatron", work / "hf", log=log)
        return compare_folders(hf_dir, work / "hf")
