"""Train a dLLM with dTRPO (or a peer objective, or masked-diffusion SFT):
`python -m dtrpo_mega.train --config CFG.yaml [section.key=value ...]`.

Launch with torchrun (or srun) for several ranks; see examples/. A configuration, data or
checkpoint error (ValueError, OSError) prints as one line, `error: ...`, from the first rank that
meets it, and every rank exits with status 2; DTRPO_TRACEBACK=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import timedelta

import torch.distributed as dist

from dtrpo_mega.config import load_config
from dtrpo_mega.parallel.runtime import shutdown
from dtrpo_mega.training.loop import train

SUMMARY_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected")


def summary(history: list[dict], window: int = 10) -> str:
    """First and last values (means over `window` logged steps) of the headline metrics."""
    first, last = history[:window], history[-window:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    lines = [f"{'metric':<20}{'start':>12}{'end':>12}", "-" * 44]
    lines += [f"{k:<20}{mean(first, k):>12.4f}{mean(last, k):>12.4f}" for k in SUMMARY_KEYS if k in history[0]]
    return "\n".join(lines)


def first_to_report() -> bool:
    """Whether this rank reports an error all ranks may meet: the first to claim it in the process
    group's store, or, before the groups exist, rank 0."""
    if not dist.is_initialized():
        return os.environ.get("RANK", "0") == "0"
    try:
        return dist.distributed_c10d._get_default_store().add("dtrpo_error_reported", 1) == 1
    except RuntimeError:  # the store is gone (its host rank exited)
        return dist.get_rank() == 0


def torchrun_store():
    """torchrun's own key-value store (it outlives every rank), or None outside torchrun."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=60))


def report(err: Exception) -> None:
    """Print `error: ...` once. Before the process groups exist rank 0 prints it, and under torchrun
    (which stops every rank once one exits: torch 2.9.1 at once) the other ranks exit only after
    rank 0 has printed, or 60 s have passed."""
    early = not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    reporter = first_to_report()
    if reporter:
        print(f"error: {err}", file=sys.stderr, flush=True)
    if not early or (store := torchrun_store()) is None:
        return
    if reporter:
        store.set("dtrpo_error_reported", "1")
    else:
        with contextlib.suppress(RuntimeError):  # rank 0 never got there: exit all the same
            store.wait(["dtrpo_error_reported"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="YAML file with the run's sections")
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied after the file")
    args = parser.parse_args(argv)
    try:
        history = train(load_config(args.config, args.overrides))
    except (ValueError, OSError) as err:
        if os.environ.get("DTRPO_TRACEBACK"):
            raise
        report(err)
        sys.exit(2)
    if history:
        print(f"\nsummary over {history[-1]['step']} steps (means of the first and last 10 steps)\n{summary(history)}",
              flush=True)
    shutdown()


if __name__ == "__main__":
    main()
