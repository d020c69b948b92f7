"""The CPU shims for megatron-core: device mapping, Tensor.cuda scope, and the RNG tracker."""

import pytest
import torch

from dtrpo_mega.parallel import cpu_shims

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shims act only without CUDA")


def test_torch_view_maps_cuda_to_cpu_without_touching_global_torch():
    view = cpu_shims._TorchOnCpu()
    assert view.zeros([], dtype=torch.int, device="cuda").device.type == "cpu"
    assert view.empty((2,), device=view.cuda.current_device()).device.type == "cpu"
    assert view.cuda.synchronize() is None
    assert view.float32 is torch.float32
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")


def test_tensor_cuda_is_identity_only_inside_the_block():
    t = torch.ones(2)
    with cpu_shims.tensor_cuda_stays_on_cpu():
        assert t.cuda() is t
    with pytest.raises((AssertionError, RuntimeError)):
        t.cuda()


def test_rng_tracker_forks_and_restores_the_cpu_generator():
    tracker = cpu_shims.CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    outer_expected = torch.rand(3)
    torch.manual_seed(0)
    with tracker.fork():
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), outer_expected), "fork must not advance the outer generator"
    torch.manual_seed(123)
    assert torch.equal(inside, torch.rand(3))
    with tracker.fork():
        assert not torch.equal(torch.rand(3), inside), "the forked state must advance"
    states = tracker.get_states()
    with tracker.fork():
        a = torch.rand(3)
    tracker.set_states(states)
    with tracker.fork():
        assert torch.equal(torch.rand(3), a)
    with pytest.raises(RuntimeError, match="already exists"):
        tracker.add("other", 123)
    with pytest.raises(RuntimeError, match="not added"):
        with tracker.fork("missing"):
            pass
