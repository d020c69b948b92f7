"""Processes a rank starts die with it.

megatron-core's checkpoint writer (dist_checkpointing `FileSystemWriterAsync`, used by the
torch_dist save strategy even for synchronous saves) forks writer processes and collects their
results through a queue served by a spawned `multiprocessing.Manager`. Killed with SIGKILL in the
middle of a save, a rank leaves them all behind: the manager server waits forever, writers hang
on their queues. Here every process forked by a rank gets the kernel's parent-death signal
(SIGKILL), and the results queue is an in-process `queue.Queue`, so no server process exists: our
saves are synchronous, so the rank itself both puts the writers' results and reads them.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal

PR_SET_PDEATHSIG = 1
_installed = False


def _die_with_parent() -> None:
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def tie_children_to_this_process() -> None:
    """Idempotent; call before the first checkpoint save."""
    global _installed
    if _installed:
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if os.uname().sysname == "Linux":
        os.register_at_fork(after_in_child=_die_with_parent)
    filesystem_async._results_queue = queue.Queue()
    _installed = True
