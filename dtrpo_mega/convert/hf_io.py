"""Hugging Face checkpoint folders, read and written one tensor at a time.

Reading: `config.json` plus `*.safetensors`, single file or sharded with
`model.safetensors.index.json`; nothing is executed (no remote code, no pickle). Each tensor is
read through its own short-lived `safe_open`, so no file stays mapped. A malformed file (JSON that
does not parse, a pickle or truncated file named `.safetensors`, a dtype we do not read) is a
ValueError naming the file, and the tensor or field where there is one.
Writing: size-capped safetensors shards plus the index, streamed: the shard layout is planned
from names, shapes and dtypes up front, so each tensor's bytes go to disk as soon as it is made.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

INDEX_FILE = "model.safetensors.index.json"
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the spelling of config.json's `torch_dtype`)."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_json_object(file: Path) -> dict:
    """A JSON file holding one object; a ValueError naming the file when it is anything else."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not valid JSON (not UTF-8: {err.reason} at byte {err.start})") from None
    except RecursionError:
        raise ValueError(f"{file}: not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _not_safetensors(file: Path, err: Exception) -> ValueError:
    try:
        with open(file, "rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    pickled = head[:1] == b"\x80" or head == b"PK"  # a pickle protocol opcode, or torch.save's zip archive
    hint = ("; it looks like a pickle (torch.save) file, which is never read: save it with safetensors" if pickled
            else "")
    return ValueError(f"{file}: not a valid or complete safetensors file ({err}){hint}")


class HFCheckpoint:
    """A Hugging Face checkpoint folder: its config and a lazy view of its tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.config_file} not found: a Hugging Face checkpoint folder needs a "
                                    "config.json")
        self.config: dict = read_json_object(self.config_file)

    @functools.cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """Name -> file, shape and dtype of every tensor (from the files' headers)."""
        tensors = {}
        for file in self._files():
            try:
                with safe_open(file, framework="pt") as f:
                    headers = [(name, f.get_slice(name)) for name in f.keys()]
                    headers = [(name, tuple(view.get_shape()), view.get_dtype()) for name, view in headers]
            except SafetensorError as err:
                raise _not_safetensors(file, err) from None
            for name, shape, dtype in headers:
                if dtype not in DTYPES_BY_NAME:
                    raise ValueError(f"{file}: tensor {name!r} has dtype {dtype}, which is not supported "
                                     f"(supported: {', '.join(DTYPES_BY_NAME)})")
                tensors[name] = TensorInfo(file, shape, DTYPES_BY_NAME[dtype])
        return tensors

    def _files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = read_json_object(index).get("weight_map")
            if not (isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values())):
                raise ValueError(f"{index}: 'weight_map' must be an object of tensor name -> shard file")
            for name, shard in weight_map.items():
                if not (self.path / shard).is_file():
                    raise FileNotFoundError(f"{index}: shard {shard} of tensor {name!r} is missing from {self.path}")
            return [self.path / f for f in sorted(set(weight_map.values()))]
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            others = sorted(p.name for p in self.path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            hint = (f" (found {others}: pickle checkpoints are not read; save them as safetensors first)" if others
                    else "")
            raise FileNotFoundError(f"no *.safetensors in {self.path}{hint}")
        return files

    def read(self, name: str) -> Tensor:
        info = self.tensors[name]
        try:
            with safe_open(info.file, framework="pt") as f:
                return f.get_tensor(name)
        except SafetensorError as err:
            raise _not_safetensors(info.file, err) from None


def parse_size(text: str) -> int:
    """'5GB' -> 5 * 10**9; '512MiB' -> 512 * 2**20; plain numbers are bytes."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    return int(upper)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class SafetensorsWriter:
    """Writes planned tensors, in plan order, into shards of at most `max_shard_bytes` (a tensor
    larger than that gets a shard of its own) and `model.safetensors.index.json`."""

    def __init__(self, out_dir: str | Path, plan: list[PlannedTensor], max_shard_bytes: int):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for t in plan:
            if self.shards[-1] and size + t.nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(t)
            size += t.nbytes
        self._queue = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._file = None

    def shard_name(self, i: int) -> str:
        return f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def _open(self, i: int):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for t in self.shards[i]:
            header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = open(self.out_dir / self.shard_name(i), "wb")
        self._file.write(len(raw).to_bytes(8, "little") + raw)

    def write(self, name: str, tensor: Tensor) -> None:
        if self._next >= len(self._queue):
            raise ValueError(f"{name}: all {len(self._queue)} planned tensors are already written")
        shard, planned = self._queue[self._next]
        if (name, tuple(tensor.shape), tensor.dtype) != (planned.name, planned.shape, planned.dtype):
            raise ValueError(
                f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} written where the plan has "
                f"{planned.name} {planned.shape} {planned.dtype}"
            )
        if self._file is None:
            self._open(shard)
        self._file.write(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
        self._next += 1
        if self._next == len(self._queue) or self._queue[self._next][0] != shard:
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._next != len(self._queue):
            missing = self._queue[self._next][1].name
            raise ValueError(f"only {self._next} of {len(self._queue)} planned tensors were written; next: {missing}")
        weight_map = {t.name: self.shard_name(i) for i, shard in enumerate(self.shards) for t in shard}
        total = sum(t.nbytes for shard in self.shards for t in shard)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
