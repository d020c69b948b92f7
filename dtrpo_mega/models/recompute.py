"""Activation recomputation settings (megatron's names and meaning).

- `none`: keep every activation for the backward pass.
- `selective`: recompute only the core attention (the s x s part) in the backward pass.
- `full`: recompute whole transformer layers; `method=uniform` checkpoints groups of
  `num_layers` layers (storing each group's input), `method=block` checkpoints the first
  `num_layers` layers of each pipeline stage and keeps the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RecomputeGranularity(str, Enum):
    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class RecomputeMethod(str, Enum):
    UNIFORM = "uniform"
    BLOCK = "block"


@dataclass(frozen=True)
class RecomputeConfig:
    granularity: RecomputeGranularity = RecomputeGranularity.NONE
    method: RecomputeMethod = RecomputeMethod.UNIFORM
    num_layers: int = 1
