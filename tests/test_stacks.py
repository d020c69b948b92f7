"""The two tested stacks, named the same everywhere, and what dtrpo_mega does about their differences
(dtrpo_mega/compat.py) and their notices (dtrpo_mega/quiet.py)."""

import logging
import re
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import REPO
from dtrpo_mega import compat


def _pin(path: str, pattern: str) -> str:
    return re.search(pattern, (REPO / path).read_text(), re.MULTILINE).group(1)


def test_every_pin_names_a_tested_version():
    """The NGC pins of the Makefile, the Dockerfile and gpu_check.sh are the versions compat names."""
    py311_megatron, ngc_megatron = compat.CHECKED_MEGATRON_CORE_VERSIONS
    cpu_torch, ngc_torch = compat.CHECKED_TORCH_VERSIONS
    assert _pin("Makefile", r"^TORCH_VERSION \?= (\S+)") == cpu_torch
    assert _pin("Makefile", r"^NGC_TORCH_VERSION \?= (\S+)") == ngc_torch
    assert _pin("Makefile", r"^NGC_MEGATRON_CORE_VERSION \?= (\S+)") == ngc_megatron
    assert _pin("Dockerfile", r"^ARG MEGATRON_CORE=(\S+)") == ngc_megatron
    assert _pin("tools/gpu_check.sh", r"print\('(\S+)' if sys.version_info >= \(3, 12\)") == ngc_megatron
    assert _pin("tools/gpu_check.sh", r"else '(\S+)'\)") == py311_megatron


def test_an_untested_megatron_core_is_named_once(monkeypatch):
    monkeypatch.setattr(compat, "megatron_core_version", lambda: "0.17.0")
    monkeypatch.setattr(compat, "_version_checked", False)
    with pytest.warns(RuntimeWarning, match=r"megatron-core 0\.17\.0 is not one dtrpo_mega was tested with "
                                            r"\(0\.16\.1, 0\.19\.2\)"):
        compat.check_megatron_core_version()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_megatron_core_version()  # once per process


def test_the_running_megatron_core_is_a_tested_one():
    assert compat.megatron_core_version() in compat.CHECKED_MEGATRON_CORE_VERSIONS


def test_upstream_notices_are_folded_and_the_rest_is_logged(caplog):
    import dtrpo_mega  # noqa: F401  (installs the filters)

    with caplog.at_level(logging.WARNING):
        logging.getLogger("megatron.core.models.gpt.gpt_model").warning("GPTModel IS DEPRECATED. GPTModel is ...")
        logging.getLogger("megatron.core.dist_checkpointing.strategies.torch").warning(
            "MCore's async save is deprecated and will be removed in the future releases.")
        logging.getLogger("megatron.core.dist_checkpointing.strategies.common").warning(
            "load_common is deprecated and will be removed in a future release. `torch_dist` now handles ...")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/usr'")
        logging.getLogger("megatron.core.models.gpt.gpt_model").warning("a real problem")
    no_gpu = [] if torch.cuda.is_available() else ["No CUDA runtime is found, using CUDA_HOME='/usr'"]
    assert [r.getMessage() for r in caplog.records] == [m for m in ["No CUDA runtime is found, using CUDA_HOME='/usr'",
                                                                     "a real problem"] if m not in no_gpu]


@pytest.mark.parametrize("message", [
    "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a single process.",
    "The argument order of load has been changed. Please check the document to avoid future breakages.",
    "TypedStorage is deprecated. It will be removed in the future and UntypedStorage will be the only storage class.",
])
def test_torch_2_9_checkpointing_warnings_are_upstream_ones(message):
    """What torch 2.9.1's DCP warns while megatron-core 0.19.2 saves and loads (seen in its test run)."""
    from dtrpo_mega import quiet

    assert quiet.UPSTREAM.search(message)
    assert not quiet.UPSTREAM.search("checkpoint.dir is not writable")


def test_gloo_banner_is_dropped_and_the_rest_of_stdout_kept_in_order():
    code = ("import os, sys; from dtrpo_mega import quiet\n"
            "print('before', flush=True)\n"
            "with quiet.no_gloo_banner():\n"
            "    print('mine 1')\n"
            "    os.write(1, b'[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks "
            "is : 1\\n[Gloo] Rank 1 is NOT connected to: [0]\\n')\n"
            "    os.write(1, b'from C: kept\\n')\n"
            "    print('mine 2')\n"
            "print('after')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out == "before\nmine 1\nfrom C: kept\nmine 2\nafter\n"
