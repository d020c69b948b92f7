"""Aggregate the seeds of a reproduction: a markdown report and the gain-against-cost plot.

The report replaces the text between RESULTS_BEGIN and RESULTS_END of an existing file, so
hand-written commentary around the generated tables survives a rerun.
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

RESULTS_BEGIN, RESULTS_END = "<!-- reproduce_small:begin -->", "<!-- reproduce_small:end -->"
LABELS = {"dtrpo": "dTRPO", "vrpo": "VRPO (n={n})", "exact_trajectory": "exact trajectory",
          "mean_field": "DPO, mean-field likelihood"}


@dataclass
class MethodSummary:
    method: str
    label: str
    gains: list[float]  # accuracy after - SFT accuracy, per seed (percentage points)
    after: list[float]
    passes_per_pair: float
    train_seconds: list[float]
    tokens_per_forward: float  # held-out decoding after training, mean over seeds

    @property
    def gain(self) -> tuple[float, float]:
        return _mean_std(self.gains)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def load_seeds(out: Path, seeds: list[int]) -> list[dict]:
    return [json.loads((out / f"seed{s}" / "result.json").read_text()) for s in seeds]


def summarize(results: list[dict]) -> list[MethodSummary]:
    cfg = results[0]["config"]
    rows = []
    for method in cfg["methods"]:
        per_seed = [r["methods"][method] for r in results]
        rows.append(MethodSummary(
            method, LABELS[method].format(n=cfg["vrpo_samples"]),
            [100 * (m["accuracy"] - r["sft"]["accuracy"]) for m, r in zip(per_seed, results)],
            [100 * m["accuracy"] for m in per_seed],
            statistics.fmean(m["forward_passes_per_pair"] for m in per_seed),
            [m["train_seconds"] for m in per_seed],
            statistics.fmean(m["tokens_per_forward"] for m in per_seed),
        ))
    return rows


def markdown(results: list[dict], rows: list[MethodSummary], command: str, plot_name: str) -> str:
    cfg, seeds = results[0]["config"], [r["seed"] for r in results]
    base = next((r for r in rows if r.method == "dtrpo"), rows[0])
    sft = [100 * r["sft"]["accuracy"] for r in results]
    sft_tpf = statistics.fmean(r["sft"]["tokens_per_forward"] for r in results)
    pref = cfg["preference"]
    lines = [
        RESULTS_BEGIN,
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {_cpus()} CPU cores, no GPU; seeds {seeds}.  ",
        f"Task: sort {cfg['task']['items']} numbers in 0..{cfg['task']['max_value'] - 1}; {cfg['held_out_prompts']} "
        f"held-out prompts, greedy decoding with the model's decoder (threshold {cfg['threshold']}); accuracy is the "
        "exact-match rate.  ",
        f"SFT: {cfg['sft']['steps']} steps x {cfg['sft']['global_batch_size']} examples from scratch "
        f"(held-out accuracy {_fmt(*_mean_std(sft))} %, {sft_tpf:.2f} decoding tokens per forward). Pairs: "
        f"{cfg['samples_per_prompt']} samples per prompt at temperature {cfg['temperature']} for "
        f"{cfg['sample_prompts']} prompts, correct vs incorrect "
        f"({statistics.fmean(r['pairs']['pairs'] for r in results):.0f} pairs per seed on average).  ",
        f"Every method: {pref['steps']} optimizer steps x {pref['global_batch_size']} pairs, lr {pref['lr']}, beta "
        f"{cfg['beta']}, NLL weight {cfg['nll_weight']}, from the seed's SFT model, resident reference.",
        "",
        "| method | accuracy gain (pp, mean ± std) | minus dTRPO's gain (pp, paired) | accuracy after (%) | "
        "forward passes / pair | train time (s, mean) | time vs dTRPO | decoding tokens / forward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        seconds = statistics.fmean(r.train_seconds)
        paired = _fmt(*_mean_std([g - b for g, b in zip(r.gains, base.gains)]), signed=True) if r is not base else "-"
        lines.append(f"| {r.label} | {_fmt(*r.gain, signed=True)} | {paired} | {_fmt(*_mean_std(r.after))} | "
                     f"{r.passes_per_pair:.1f} | {seconds:.1f} | {seconds / statistics.fmean(base.train_seconds):.2f}x "
                     f"| {r.tokens_per_forward:.2f} |")
    lines += ["", "Per seed (accuracy %, SFT -> after each method):", "",
              "| seed | SFT | pairs | " + " | ".join(r.label for r in rows) + " |", "| --- " * (len(rows) + 3) + "|"]
    for i, res in enumerate(results):
        lines.append(f"| {res['seed']} | {100 * res['sft']['accuracy']:.1f} | {res['pairs']['pairs']} | "
                     + " | ".join(f"{r.after[i]:.1f}" for r in rows) + " |")
    lines += ["", f"![accuracy gain against training cost]({plot_name})", RESULTS_END]
    return "\n".join(lines)


def _fmt(mean: float, std: float, signed: bool = False) -> str:
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def plot(rows: list[MethodSummary], png: Path) -> Path:
    """Gain against cost, the analogue of the paper's Figure 1: forward passes and wall time."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (xlabel, cost) in zip(axes,
                                  (("forward passes per preference pair", lambda r: [r.passes_per_pair] * len(r.gains)),
                                   ("training wall time (s)", lambda r: r.train_seconds))):
        for i, r in enumerate(rows):
            mean, std = r.gain
            xs = cost(r)
            ax.scatter(xs, r.gains, alpha=0.35, s=18, color=f"C{i}")
            ax.errorbar([statistics.fmean(xs)], [mean], yerr=[std], fmt="o", capsize=4, color=f"C{i}", label=r.label)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=xlabel, ylabel="held-out accuracy gain over SFT (pp)")
    axes[0].legend(fontsize=8)
    fig.suptitle("accuracy gain against training cost (points: seeds; bars: mean ± std)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_report(results: list[dict], report: Path, command: str) -> tuple[Path, Path]:
    """Write (or update between the markers) the report, and its plot beside it."""
    rows = summarize(results)
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, report.with_suffix(".png"))
    body = markdown(results, rows, command, png.name)
    if report.is_file() and RESULTS_BEGIN in (text := report.read_text()) and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        body = head + body + rest.split(RESULTS_END, 1)[1]
    else:
        body = "# Small-scale reproduction: dTRPO against its peers\n\n" + body + "\n"
    report.write_text(body)
    return report, png
