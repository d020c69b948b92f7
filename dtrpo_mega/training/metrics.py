"""Training metrics: reduction over micro-batches and data-parallel ranks, and where they go.

Names follow TRL (`loss`, `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
`rewards/margins`, `logps/chosen`, `logps/rejected`; SFT reports `loss` only) plus `grad_norm`,
`lr`, `scored_tokens`, `pairs_per_s`, `tokens_per_s`, `rows_per_pair` (sequence rows the policy
forwards per pair; a resident reference forwards as many) and `step_s`. The logging rank (the last
one: it holds the last pipeline stage) writes the console (a progress bar on a terminal, a line per
interval otherwise), a JSONL file, wandb (offline unless WANDB_API_KEY is set) and, at the end, a
PNG of the reward curves.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dtrpo_mega.losses.preference import METRICS
from dtrpo_mega.parallel.runtime import comm_device

COUNTS = ("pairs", "scored_tokens")
CONSOLE = (("loss", "loss", ".4f"), ("rewards/accuracies", "acc", ".3f"), ("rewards/margins", "margin", "+.4f"),
           ("rewards/chosen", "chosen", "+.4f"), ("rewards/rejected", "rejected", "+.4f"), ("grad_norm", "grad", ".3f"),
           ("lr", "lr", ".2e"))


def reduce_reports(reports: list[dict], dp_group: dist.ProcessGroup) -> dict[str, float]:
    """Per-pair means of the last stage's summed reports (SFT: per example), over micro-batches and `dp_group`."""
    keys = [k for k in (*METRICS, *COUNTS) if k in reports[0]]
    totals = torch.tensor([[float(r[k]) for k in keys] for r in reports], dtype=torch.float64,
                          device=comm_device()).sum(0)
    dist.all_reduce(totals, group=dp_group)
    values = dict(zip(keys, totals.cpu().tolist()))
    pairs = values.pop("pairs")
    out = {k: values[k] / pairs for k in keys if k not in COUNTS}
    out["scored_tokens"] = values["scored_tokens"]
    return out


def keep_until(path: Path, step: int) -> None:
    """Drop the rows of steps after `step` (a resumed run logs them again; a fresh run, step 0,
    starts an empty file); the file is replaced atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class MetricsLogger:
    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int, config: dict, wandb_project: str | None,
                 progress_bar: bool, log_interval: int):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        keep_until(self.run_dir / "metrics.jsonl", start_step)
        self.jsonl = (self.run_dir / "metrics.jsonl").open("a")
        self.log_interval = log_interval
        self.history: list[dict] = []
        self.bar = None
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="dTRPO", dynamic_ncols=True)
        self.wandb = None
        if wandb_project:
            import wandb

            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self.wandb = wandb.init(project=wandb_project, dir=str(self.run_dir), config=config, mode=mode,
                                    resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **metrics}
        self.history.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        shown = [f"{label} {metrics[k]:{fmt}}" for k, label, fmt in CONSOLE if k in metrics]
        line = " | ".join([f"step {step:>5d}", *shown, f"{metrics['pairs_per_s']:.1f} pairs/s",
                           f"{metrics['tokens_per_s']:.0f} tok/s"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(" | ".join(shown[:3]))
            if step % self.log_interval == 0:
                self.bar.write(line)
        elif step % self.log_interval == 0:
            print(line, flush=True)

    def close(self) -> Path | None:
        self.jsonl.close()
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        return plot_rewards(self.run_dir / "metrics.jsonl", self.run_dir / "rewards.png")


def plot_rewards(jsonl: Path, png: Path) -> Path | None:
    """Reward curves, accuracy and loss against the step, from the JSONL file."""
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    if "rewards/chosen" not in records[0]:  # SFT: the loss alone
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(steps, [r["loss"] for r in records], color="tab:red")
        ax.set(title="masked-diffusion SFT loss", xlabel="step")
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
        return png
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        axes[0].plot(steps, [r[key] for r in records], label=key)
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set_title("rewards (beta * trajectory log-ratio)")
    axes[1].plot(steps, [r["rewards/accuracies"] for r in records], color="tab:green")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("rewards/accuracies")
    axes[2].plot(steps, [r["loss"] for r in records], color="tab:red")
    axes[2].set_title("loss")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
