"""Quiet, useful output: megatron-core's and apex's fallback warnings (no Transformer Engine, no
apex: expected on CPU), and megatron's deprecation note about a default dtrpo_mega does not set,
are collected and summarized once, in one line, by rank 0; ranks other than 0 show no warnings at
all (errors still print). Deprecation notices that torch and megatron-core raise inside their own
checkpoint code (nothing a user can change), and megatron's CUDA_DEVICE_MAX_CONNECTIONS hint when
there is no GPU, are not shown. So are the notices megatron-core 0.19.2 and torch 2.9.1 log (not
warn) about nothing a dtrpo_mega user can change (`UPSTREAM_LOGS`), and the `[Gloo] Rank N is
connected to ...` lines torch 2.9.1's gloo prints on stdout for every process group it makes
(`no_gloo_banner`; torch 2.13.0's prints none).

Installed when `dtrpo_mega` is imported, before megatron-core is, since those warnings fire at
import. `DTRPO_WARNINGS=all` shows every warning on every rank as Python would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

# megatron-core's fallbacks without TE / apex, and its deprecation note about a default we do not set
FALLBACK = re.compile(r"(Transformer Engine|Apex|apex)\b.*\bnot (installed|available)|Falling back to|full scope is "
                      r"deprecated", re.IGNORECASE)
# raised inside torch's / megatron-core's distributed checkpointing; not about anything dtrpo_mega or its user calls
# (megatron-core 0.19.2's loader calls torch's `checkpoint.load` in a way torch 2.9.1 warns about twice; torch
# 2.9.1's DCP writer calls the deprecated `tensor.storage()`)
UPSTREAM = re.compile(r"`load_state_dict` is deprecated|Please use DTensor instead|torch\.distributed is disabled, "
                      r"unavailable or uninitialized|The argument order of load has been changed|TypedStorage is "
                      r"deprecated")
NO_GPU_HINT = re.compile(r"CUDA_DEVICE_MAX_CONNECTIONS")
# logger -> notice it logs that is not the user's to act on (megatron-core 0.19.2, torch 2.9.1)
UPSTREAM_LOGS = {
    # dtrpo_mega builds GPTModel on purpose: docs/megatron_versions.md says why, and until when
    "megatron.core.models.gpt.gpt_model": re.compile(r"GPTModel IS DEPRECATED"),
    # its synchronous save runs the async path with async_strategy="mcore" and logs this on every rank
    "megatron.core.dist_checkpointing.strategies.torch": re.compile(r"MCore's async save is deprecated"),
    # it reads common.pt first where one exists, and every save writes one for 0.16.1 (compat.write_common_state_file)
    "megatron.core.dist_checkpointing.strategies.common": re.compile(r"load_common is deprecated"),
}
# a CUDA build of torch without a driver (a login node, CI), at `import torch.utils.cpp_extension`
NO_GPU_LOGS = {"torch.utils.cpp_extension": re.compile(r"No CUDA runtime is found")}
GLOO_BANNER = re.compile(rb"\[Gloo\] Rank \d+ is (NOT )?connected to[^\n]*(\n|$)")
_fallbacks: list[str] = []
_reported = False


def rank() -> int:
    """This process's rank from the launcher's environment (torchrun's RANK, srun's SLURM_PROCID)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def install() -> None:
    if os.environ.get("DTRPO_WARNINGS") == "all" or getattr(warnings.showwarning, "_dtrpo_quiet", False):
        return
    show = warnings.showwarning

    def quiet(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if FALLBACK.search(text):
            if text not in _fallbacks:
                _fallbacks.append(text)
        elif UPSTREAM.search(text) or (NO_GPU_HINT.search(text) and not _cuda()):
            return
        elif rank() == 0:
            show(message, category, filename, lineno, file, line)

    quiet._dtrpo_quiet = True
    warnings.showwarning = quiet
    for name, notice in UPSTREAM_LOGS.items():
        logging.getLogger(name).addFilter(lambda record, notice=notice: not notice.search(record.getMessage()))
    for name, notice in NO_GPU_LOGS.items():
        logging.getLogger(name).addFilter(
            lambda record, notice=notice: _cuda() or not notice.search(record.getMessage()))


def _cuda() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_available()


def report() -> None:
    """Rank 0, once per process: one line for the fallback warnings collected so far."""
    global _reported
    if _reported or not _fallbacks or rank() != 0:
        return
    _reported = True
    print(f"note: no Transformer Engine / apex here, megatron-core runs its local fallbacks ({len(_fallbacks)} "
          f"warnings hidden, e.g. {_fallbacks[0]!r}; DTRPO_WARNINGS=all shows them)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def no_gloo_banner():
    """Within the block, stdout (file descriptor 1, where gloo's C++ code prints) goes to a file;
    at its end, everything but gloo's connection banner is written back, in order."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            capture.seek(0)
            if rest := GLOO_BANNER.sub(b"", capture.read()):
                os.write(1, rest)
