"""Every difference between the megatron-core and torch versions dtrpo_mega runs on, in one place.

Two stacks are tested (`make test`, `make test-ngc`): Python 3.11 + torch 2.13.0 (CPU build) +
megatron-core 0.16.1, and Python 3.12 + torch 2.9.1 (CUDA build, also without a driver) +
megatron-core 0.19.2, the NGC image's. Each entry below names what it was checked against.

- Full activation recompute. megatron-core 0.16.1 runs it through the block's own
  `TransformerBlock._checkpointed_forward`; 0.19.2 removed that method and calls the module-level
  `megatron.core.recompute.checkpointed_forward(block, ...)` (imported by name into
  `transformer_block`), which checkpoints with `tensor_parallel.checkpoint`: that reads the CUDA
  RNG state (fails without a driver) and saves its inputs with `save_for_backward` (rejects the
  `TokenLayout` we pass as `attention_mask`, on a GPU too). `route_full_recompute` sends either
  call to the block's own function, for our blocks only.
- The common (non-tensor) state of a dist checkpoint. megatron-core 0.16.1 writes it to
  `common.pt` and loads it only from there; 0.19.2 keeps it as a `common_state` object inside the
  DCP files and writes no `common.pt` (it still reads one first when present).
  `write_common_state_file` copies it out after a 0.19.2 save, so checkpoints load on both.
- Transformer Engine absent, MoE router. megatron-core 0.16.1's `transformer/moe/moe_utils.py`
  imports `te_general_gemm` only when TE imports, yet its router GEMM tests the name: a NameError
  without TE. 0.19.2 sets it to None there. `define_missing_te_names` does the same on 0.16.1.
- The MoE loss tracker. megatron-core sizes its per-layer loss tracker by the first model that
  records into it and keeps it for the process, so a later model with more layers indexes past it.
  0.16.1 keeps it as the module dict `moe_utils._MOE_LAYER_WISE_LOGGING_TRACKER`; 0.19.2 as a
  `MoEMetricsTracker` object in `moe_logging`. `forget_moe_loss_tracker` empties either, so each
  MoE model built starts one of its own size.
- Version check. `check_megatron_core_version` warns once, naming the tested versions, when the
  installed megatron-core is another one (pyproject allows >=0.16.1,<0.20).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CHECKED_MEGATRON_CORE_VERSIONS = ("0.16.1", "0.19.2")
CHECKED_TORCH_VERSIONS = ("2.13.0", "2.9.1")
_FULL_RECOMPUTE = "_dtrpo_full_recompute"


def megatron_core_version() -> str:
    """The installed megatron-core's release (a local suffix such as `+da5bc5a` dropped)."""
    try:
        return version("megatron-core").split("+")[0]
    except PackageNotFoundError:  # a source checkout on PYTHONPATH
        from megatron.core import package_info

        return package_info.__version__.split("+")[0]


_version_checked = False


def check_megatron_core_version() -> None:
    """Warn once per process when megatron-core is not a version the test suites ran on."""
    global _version_checked
    if _version_checked:
        return
    _version_checked = True
    found = megatron_core_version()
    if found not in CHECKED_MEGATRON_CORE_VERSIONS:
        warnings.warn(f"megatron-core {found} is not one dtrpo_mega was tested with "
                      f"({', '.join(CHECKED_MEGATRON_CORE_VERSIONS)}); run `make test` with it before training",
                      RuntimeWarning, stacklevel=2)


def define_missing_te_names() -> None:
    """Give megatron-core 0.16.1's MoE utilities the None it tests for when TE is not installed."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def forget_moe_loss_tracker() -> None:
    """Drop megatron-core's MoE loss tracker (and its size), whichever version keeps it."""
    try:
        from megatron.core.transformer.moe import moe_logging
    except ImportError:  # megatron-core 0.16.1
        from megatron.core.transformer.moe import moe_utils

        moe_utils.get_moe_layer_wise_logging_tracker().clear()
        return
    moe_logging.destroy_moe_metrics_tracker()


def route_full_recompute(block, forward: Callable) -> None:
    """Make `forward(hidden_states, **kwargs)` the full-recompute path of `block` (a TransformerBlock)."""
    from megatron.core.transformer import transformer_block

    if hasattr(transformer_block.TransformerBlock, "_checkpointed_forward"):  # megatron-core 0.16.1
        block._checkpointed_forward = forward
        return
    original = transformer_block.checkpointed_forward  # megatron-core 0.19.2
    if not getattr(original, "_dtrpo_routed", False):
        def checkpointed_forward(self, *args, **kwargs):
            own = getattr(self, _FULL_RECOMPUTE, None)
            return own(*args, **kwargs) if own is not None else original(self, *args, **kwargs)

        checkpointed_forward._dtrpo_routed = True
        transformer_block.checkpointed_forward = checkpointed_forward
    setattr(block, _FULL_RECOMPUTE, forward)


def write_common_state_file(ckpt_dir: str | Path) -> None:
    """After `dist_checkpointing.save` (one rank): write `common.pt` if this megatron-core did not."""
    import torch
    from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME

    path = Path(ckpt_dir) / COMMON_STATE_FNAME
    if path.exists():  # megatron-core 0.16.1
        return
    from megatron.core.dist_checkpointing.serialization import load_common_state_dict  # 0.19.2

    torch.save(load_common_state_dict(str(ckpt_dir)), path)
