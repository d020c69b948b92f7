"""Bytes of the tensors autograd keeps for the backward pass: the activations of a forward.

`torch.autograd.graph.saved_tensors_hooks` sees every tensor an op saves for backward, and the
inputs `torch.utils.checkpoint` keeps for its recomputation (checkpointed regions save nothing
else). Tensors sharing a storage count once, by the storage's size; storages of the excluded
modules' parameters and buffers (a linear layer saves its weight) are left out.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks


def _key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


class SavedActivations:
    """`with SavedActivations(model) as saved: loss = f()`, then `saved.bytes`.

    Measure while the graph is alive (before backward): saved tensors then cannot be freed, so
    storage addresses are unique. Parameters and buffers of `exclude` are not counted.
    """

    def __init__(self, *exclude: nn.Module):
        self._excluded = {_key(t) for module in exclude for t in chain(module.parameters(), module.buffers())}
        self._storages: dict[tuple[str, int], int] = {}
        self._hooks = saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _key(tensor)
        if key not in self._excluded:
            self._storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    @property
    def tensors(self) -> int:
        """Distinct storages counted."""
        return len(self._storages)

    def __enter__(self) -> "SavedActivations":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
