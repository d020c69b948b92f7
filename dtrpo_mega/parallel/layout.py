"""The parallel layout setting, checked once, before any process group exists (no megatron import)."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "nccl", "gloo")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1  # every row's tokens split over this many ranks
    expert_model_parallel_size: int = 1  # EP: the experts of each MoE layer split over this many ranks
    expert_tensor_parallel_size: int = 1  # ETP: each expert's matrices split over this many ranks
    backend: str = "auto"  # nccl with CUDA, gloo without

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                     "expert_model_parallel_size", "expert_tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name}={getattr(self, name)!r}: must be >= 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"parallel.backend={self.backend!r}; choose from {list(BACKENDS)}")

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        """The data-parallel size at this world size, or a ValueError naming the settings."""
        tp, pp, cp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size, self.context_parallel_size
        if world_size % self.model_parallel_size:
            raise ValueError(f"parallel: world size {world_size} is not divisible by TP={tp} x PP={pp} x CP={cp} "
                             "(parallel.tensor_model_parallel_size x pipeline_model_parallel_size x "
                             "context_parallel_size)")
        ep, etp = self.expert_model_parallel_size, self.expert_tensor_parallel_size
        if world_size % (ep * etp * pp):
            raise ValueError(f"parallel: world size {world_size} is not divisible by EP={ep} x ETP={etp} x PP={pp} "
                             "(parallel.expert_model_parallel_size x expert_tensor_parallel_size x "
                             "pipeline_model_parallel_size): the experts' ranks must fill the world")
        return world_size // self.model_parallel_size
