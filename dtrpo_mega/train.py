"""Train a dLLM with dTRPO (or a peer objective, or masked-diffusion SFT):
`python -m dtrpo_mega.train --config CFG.yaml [section.key=value ...]`.

Launch with torchrun (or srun) for several ranks; see examples/. A configuration, data or
checkpoint error (ValueError, OSError) prints as one line, `error: ...`, from the first rank that
meets it, and every rank exits with status 2; DTRPO_TRACEBACK=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

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
        if first_to_report():
            print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    if history:
        print(f"\nsummary over {history[-1]['step']} steps (means of the first and last 10 steps)\n{summary(history)}",
              flush=True)
    shutdown()


if __name__ == "__main__":
    main()
