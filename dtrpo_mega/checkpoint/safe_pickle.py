"""Checkpoint metadata is read without running code from it.

torch's distributed-checkpoint reader unpickles a checkpoint's `.metadata` file unrestricted, so
a planted pickle runs when any tool loads the checkpoint. `install()` makes that reader use
`RestrictedUnpickler`, which resolves only what such metadata holds: the dataclasses and enums
of `torch.distributed.checkpoint` (metadata, planner, the filesystem's storage info),
`torch.Size`, dtypes and torch's layout decoder; anything else is refused, naming it. Every
other file of a checkpoint is read with `torch.load(weights_only=True)`, safetensors or JSON.
"""

from __future__ import annotations

import enum
import io
import pickle
import types

import torch

DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner")
ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"),
           ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
           ("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")}  # a checkpoint id


class UnsafePickle(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        value = super().find_class(module, name) if self._allowed(module, name) else None
        if value is None:
            raise UnsafePickle(f"refusing to load {module}.{name} from checkpoint metadata (only torch's checkpoint "
                               "metadata types are allowed)")
        return value

    @staticmethod
    def _allowed(module: str, name: str) -> bool:
        if (module, name) in ALLOWED:
            return True
        if module == "torch":
            return isinstance(getattr(torch, name, None), torch.dtype)
        if module in DCP_MODULES:
            value = getattr(__import__(module, fromlist=[name]), name, None)
            return isinstance(value, type) and value.__module__ == module or isinstance(value, enum.EnumMeta) or (
                isinstance(value, dict) and name.startswith("_MEM_FORMAT"))  # the memory-format encoding table
        return False


def restricted_load(file) -> object:
    try:
        return RestrictedUnpickler(file).load()
    except UnsafePickle as err:
        raise UnsafePickle(f"{getattr(file, 'name', 'checkpoint metadata')}: {err}") from None


def restricted_loads(data: bytes) -> object:
    return restricted_load(io.BytesIO(data))


def install() -> None:
    """Make torch's distributed-checkpoint reader unpickle `.metadata` through `RestrictedUnpickler`."""
    from torch.distributed.checkpoint import filesystem

    if not isinstance(filesystem.pickle, types.ModuleType) or filesystem.pickle is not pickle:
        return  # already installed
    filesystem.pickle = types.SimpleNamespace(**{name: getattr(pickle, name)
                                                 for name in ("dump", "dumps", "HIGHEST_PROTOCOL")},
                                              load=restricted_load, loads=restricted_loads)
