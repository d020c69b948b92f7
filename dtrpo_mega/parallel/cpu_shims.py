"""Let megatron-core's pipeline schedules and RNG tracker run on CPU ranks (gloo).

Active only when CUDA is absent; on a GPU `install()` does nothing. What it changes, and nothing
else (checked against megatron-core 0.16.1 and 0.19.2, whose CUDA-only calls are listed here):

1. `pipeline_parallel/schedules.py` allocates its token counter with `device="cuda"`;
   `pipeline_parallel/p2p_communication.py` allocates receive buffers on
   `torch.cuda.current_device()` and calls `torch.cuda.synchronize()`; the torch_dist checkpoint
   writer (`dist_checkpointing/strategies/filesystem_async.py`, `async_utils.py`,
   `state_dict_saver.py`) calls `torch.cuda.synchronize()` and allocates flags on the current CUDA
   device. These modules get a view of `torch` whose `cuda.current_device()` is the CPU, whose
   `cuda.synchronize()` is a no-op, and whose tensor factories map `device="cuda"` to the CPU.
   The global `torch` is untouched.
2. `LanguageModule.setup_embeddings_and_output_layer` moves the tied embedding weight with
   `Tensor.cuda()` before all-reducing it between the first and last pipeline stages; the
   `tensor_cuda_stays_on_cpu()` context makes that call an identity for its duration only.
3. `tensor_parallel.random`'s CUDA RNG tracker (used for model-parallel RNG regions) is replaced by
   `CpuRNGStatesTracker`, which has the same interface and forks the CPU generator.
"""

from __future__ import annotations

import contextlib
import types

import torch

_FACTORIES = ("zeros", "empty", "ones", "full", "tensor")


class _CpuCuda:
    """`torch.cuda` as seen by a CPU rank: the current device is the CPU; syncs are no-ops."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device():
        return torch.device("cpu")

    @staticmethod
    def synchronize(device=None):
        return None


def _on_cpu(factory):
    def wrapped(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            device = "cpu"
        return factory(*args, device=device, **kwargs)

    return wrapped


class _TorchOnCpu(types.ModuleType):
    """A stand-in for the `torch` module inside the patched megatron-core modules."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CpuCuda()
        for name in _FACTORIES:
            setattr(self, name, _on_cpu(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def tensor_cuda_stays_on_cpu():
    """Within the block, `Tensor.cuda()` returns the tensor itself (CPU ranks only)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


class CpuRNGStatesTracker:
    """Same interface as megatron-core's CudaRNGStatesTracker, over the CPU generator."""

    def __init__(self):
        self.reset()

    def is_initialized(self):
        return True

    def reset(self):
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self):
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states):
        self.states_ = {name: state.clone() for name, state in states.items()}

    def add(self, name, seed):
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def install(seed: int, tp_rank: int) -> bool:
    """Apply the shims (once; CPU only). Returns whether they are active."""
    if torch.cuda.is_available():
        return False
    from megatron.core.dist_checkpointing.strategies import async_utils, filesystem_async, state_dict_saver
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    from megatron.core.tensor_parallel import random as mp_random

    for module in (schedules, p2p_communication, filesystem_async, async_utils, state_dict_saver):
        if not isinstance(module.torch, _TorchOnCpu):
            module.torch = _TorchOnCpu()
    tracker = CpuRNGStatesTracker()
    # Same offsets as megatron-core's model_parallel_cuda_manual_seed.
    tracker.add("model-parallel-rng", seed + 2718 + tp_rank)
    tracker.add("data-parallel-rng", seed)
    mp_random._CUDA_RNG_STATE_TRACKER = tracker
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    return True
