"""Quiet, useful output: megatron-core's and apex's fallback warnings (no Transformer Engine, no
apex: expected on CPU), and megatron's deprecation note about a default dtrpo_mega does not set,
are collected and summarized once, in one line, by rank 0; ranks other than 0 show no warnings at
all (errors still print). Deprecation notices that torch and megatron-core raise inside their own
checkpoint code (nothing a user can change), and megatron's CUDA_DEVICE_MAX_CONNECTIONS hint when
there is no GPU, are not shown.

Installed when `dtrpo_mega` is imported, before megatron-core is, since those warnings fire at
import. `DTRPO_WARNINGS=all` shows every warning on every rank as Python would.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

# megatron-core's fallbacks without TE / apex, and its deprecation note about a default we do not set
FALLBACK = re.compile(r"(Transformer Engine|Apex|apex)\b.*\bnot (installed|available)|Falling back to|full scope is "
                      r"deprecated", re.IGNORECASE)
# raised inside torch's / megatron-core's distributed checkpointing; not about anything dtrpo_mega or its user calls
UPSTREAM = re.compile(r"`load_state_dict` is deprecated|Please use DTensor instead")
NO_GPU_HINT = re.compile(r"CUDA_DEVICE_MAX_CONNECTIONS")
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
