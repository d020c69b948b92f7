"""Let megatron-core's pipeline schedules, MoE layer and RNG tracker run on CPU ranks (gloo).

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
3. Mixture of experts and sequence parallelism: `transformer/moe/token_dispatcher.py` (the
   all-to-all dispatcher) creates a `torch.cuda.Stream` and copies its split sizes to the host on
   it, waiting on an event; `transformer/moe/moe_utils.py` allocates its loss tracker on
   `device="cuda"`; `transformer/moe/router.py` (expert bias, token counts),
   `tensor_parallel/mappings.py` (gather and reduce-scatter outputs), `core/utils.py` (the global
   buffer of sequence-parallel all-gathers) and `tensor_parallel/layers.py` (a sequence-parallel
   layer's gradient all-gather) allocate on `torch.cuda.current_device()`. They get the view of
   item 1, with a stream that runs everything in order (the CPU's only stream) and whose events
   are already complete. The dispatcher's `maybe_move_tensor_to_cpu` turns only CUDA tensors into
   the numpy split sizes `all_to_all_single` takes; its CPU version converts host tensors too.
4. `tensor_parallel.random`'s CUDA RNG tracker (used for model-parallel RNG regions) is replaced by
   `CpuRNGStatesTracker`, which has the same interface and forks the CPU generator.
"""

from __future__ import annotations

import contextlib
import types

import torch

_FACTORIES = ("zeros", "empty", "ones", "full", "tensor")


class _InOrderStream:
    """A CPU rank's one stream: work runs in program order, so waits and events are complete."""

    def wait_stream(self, stream):
        return None

    def record_event(self, event=None):
        return self

    def synchronize(self):
        return None


_STREAM = _InOrderStream()


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

    @staticmethod
    def Stream(*args, **kwargs):  # noqa: N802 (torch's name)
        return _STREAM

    @staticmethod
    def current_stream(device=None):
        return _STREAM

    @staticmethod
    def stream(stream):
        return contextlib.nullcontext()


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


def _host_split_sizes(original):
    def move(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    move._dtrpo_host = True
    return move


def install(seed: int, tp_rank: int, ep_rank: int = 0, etp_rank: int = 0) -> bool:
    """Apply the shims (once; CPU only). Returns whether they are active."""
    if torch.cuda.is_available():
        return False
    from megatron.core.dist_checkpointing.strategies import async_utils, filesystem_async, state_dict_saver
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    from megatron.core import utils as core_utils
    from megatron.core.tensor_parallel import layers, mappings
    from megatron.core.tensor_parallel import random as mp_random
    from megatron.core.transformer.moe import moe_utils, router, token_dispatcher

    for module in (schedules, p2p_communication, filesystem_async, async_utils, state_dict_saver, token_dispatcher,
                   moe_utils, router, mappings, core_utils, layers):
        if not isinstance(module.torch, _TorchOnCpu):
            module.torch = _TorchOnCpu()
    if not getattr(token_dispatcher.maybe_move_tensor_to_cpu, "_dtrpo_host", False):
        token_dispatcher.maybe_move_tensor_to_cpu = _host_split_sizes(token_dispatcher.maybe_move_tensor_to_cpu)
    tracker = CpuRNGStatesTracker()
    # Same offsets as megatron-core's model_parallel_cuda_manual_seed.
    tracker.add("model-parallel-rng", seed + 2718 + tp_rank)
    tracker.add("data-parallel-rng", seed)
    tracker.add("expert-parallel-rng", seed + 1024 + 100 * ep_rank + etp_rank)
    mp_random._CUDA_RNG_STATE_TRACKER = tracker
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    return True
