"""Shared test helpers: run a script under torchrun (gloo) and report its output on failure; waits
that scale with how busy the machine is (`patient`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtrpo_mega import quiet
from dtrpo_mega.parallel.runtime import free_port

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTED = Path(__file__).resolve().parent / "distributed"


def slowdown() -> float:
    """How many times slower than idle the machine runs now: its load per core, at least 1."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def load_tool(name: str):
    """tools/NAME.py as a module; tools/ goes on sys.path first, for bench_common, as when the tool runs as a script."""
    import importlib.util

    sys.path.insert(0, str(REPO / "tools"))
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patient(seconds: float) -> float:
    """A limit for waiting on work that takes well under `seconds` on an idle machine: the same
    work on a machine loaded k times over gets k times as long, so only a hang fails it."""
    return seconds * slowdown()


def pytest_configure(config):
    """pytest shows warnings itself: the upstream checkpointing ones that dtrpo_mega folds for its
    users (quiet.UPSTREAM, one list) are left out of its summary too."""
    config.addinivalue_line("filterwarnings", f"ignore:{quiet.UPSTREAM.pattern}:UserWarning")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test's pytest-timeout limit (pyproject's `timeout`, for an idle machine), scaled by the
    load when it starts (set before its timer)."""
    if item.get_closest_marker("timeout") is None:
        item.add_marker(pytest.mark.timeout(patient(float(item.config.getini("timeout")))))
    yield


def run_torchrun(script: str, nproc: int, *args: str, timeout: int = 600) -> str:
    """Run tests/distributed/<script> on `nproc` CPU ranks; fail with its output if it fails."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}", str(DISTRIBUTED / script), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(timeout))
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{script} failed (exit {proc.returncode}):\n{output[-6000:]}")
    return output


@pytest.fixture(scope="session")
def world_of_one():
    """A one-process world with TP=PP=1, for single-process model tests."""
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    return initialize(ParallelConfig(), seed=1234)


@pytest.fixture(scope="session")
def counting_datasets(tmp_path_factory):
    """family -> a 48-pair synthetic preference dataset (counting task) preprocessed for it."""
    from dtrpo_mega.data.synthetic import prepare_counting_dataset

    root = tmp_path_factory.mktemp("counting")
    return lambda family: prepare_counting_dataset(root / family / family, family, num_pairs=48, length=11)


@pytest.fixture(scope="session")
def counting_data(counting_datasets) -> str:
    return counting_datasets("fast_dllm_v2")


def float64(model):
    """The model in float64, a mixture of experts routing in float64 too (megatron-core's router
    computes its logits in `moe_router_dtype`, float32 otherwise)."""
    model = model.double()
    if model.config.num_moe_experts:
        model.config.moe_router_dtype = "fp64"
    return model


def weighted_sums_and_grads(model, micro, coefficients: torch.Tensor):
    """Per-(pair, role) weighted log-prob sums [pairs, 2] of the micro-batches, and the gradients of
    `sum(coefficients * sums)`: what every row layout must reproduce."""
    model.zero_grad()
    by_pair = torch.zeros(coefficients.shape, dtype=torch.float64)
    for mb in micro:
        sums = mb.sequence_sums(-model(mb.tokens, mb.layout, labels=mb.labels))
        (sums * coefficients[mb.pair_index]).sum().backward()
        by_pair[mb.pair_index] = sums.detach()
    return by_pair, {n: p.grad.clone() for n, p in model.named_parameters()}


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU checks run on a lent GPU)")
