"""`dtrpo demo` (`make demo`): watch dTRPO fix what SFT taught a small dLLM wrong, in a few minutes on CPU.

    dtrpo demo [--nproc 4] [--config examples/configs/demo_tiny.yaml] [demo.key=value ...] [section.key=value ...]

1. **SFT.** A tiny Fast-dLLM-v2-style model learns to reverse lists ("reverse 4 8 15 16 23 :" ->
   "23 16 15 8 4") from answers written by a careless annotator, who in most of them copied the list
   without reversing it. The model learns both, and prefers the annotator's slip.
2. **Before.** Accuracy on held-out prompts (never trained on), greedy, with the model's own decoder.
3. **Pairs.** The SFT model answers each training prompt several times at temperature 1; the task's
   checker makes (correct, incorrect) pairs, with the decoder's reveal step of every token.
4. **dTRPO** at TP=2 x PP=2 on 4 CPU ranks (torchrun, the config file), scoring the logged trajectories.
5. **After.** The same evaluation; a summary with the TRL-named metrics and the reward-curve PNG.

`demo.key=value` sets a `DemoConfig` field, any other `section.key=value` the dTRPO stage's config.
Everything goes under `demo.out` (runs/demo), which starts afresh each time. The default config is
the repository's examples/configs/demo_tiny.yaml (an installed wheel has no examples/: give --config).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "demo_tiny.yaml"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    family: str = "fast_dllm_v2"
    model_overrides: dict = field(default_factory=dict)  # DLLMConfig fields over the family's tiny size
    items: int = 5  # numbers per list
    held_out: int = 200  # prompts never trained on
    slip_rate: float = 0.6  # the annotator copies the list unreversed in this share of answers
    sft_examples: int = 8192  # distinct training prompts (SFT; the first pair_prompts also for pairs)
    pair_prompts: int = 512
    sft_steps: int = 750
    sft_lr: float = 3e-3
    sft_batch: int = 64
    samples_per_prompt: int = 8
    temperature: float = 0.7
    pairs_per_prompt: int = 4
    max_new_tokens: int = 16
    shown: list = field(default_factory=lambda: ["reverse 4 8 15 16 23 :", "reverse 1 2 3 4 5 :",
                                                 "reverse 90 7 33 61 2 :"])
    seed: int = 0


def _careless(answer: str, rng: np.random.Generator, slip_rate: float) -> str:
    """The annotator's slip: the list copied as it was given (the answer reversed back)."""
    return " ".join(answer.split()[::-1]) if rng.random() < slip_rate else answer


class Demo:
    def __init__(self, cfg: DemoConfig, config_path: str, overrides: list[str], nproc: int):
        from dtrpo_mega.data.synthetic import ListTask, write_tokenizer

        self.cfg, self.config_path, self.overrides, self.nproc = cfg, config_path, overrides, nproc
        self.out = Path(cfg.out)
        self.task = ListTask("reverse", cfg.items)
        self.held_out = list(cfg.shown) + self.task.problems(cfg.held_out - len(cfg.shown), cfg.seed + 1,
                                                             exclude=frozenset(cfg.shown))
        self.train_prompts = self.task.problems(cfg.sft_examples, cfg.seed + 2, exclude=frozenset(self.held_out))
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tokenizer = write_tokenizer(self.out / "data" / "tokenizer.json")
        self.seconds: dict[str, float] = {}

    def run(self) -> int:
        sft = self._stage("SFT", "SFT on the careless annotator's answers", self._sft)
        before = self._stage("evaluation", "held-out accuracy after SFT", lambda: self._evaluate(sft))
        pairs = self._stage("sampling", "sampling pairs from the SFT model", lambda: self._pairs(sft))
        code = self._stage("dTRPO", f"dTRPO on {self.nproc} CPU ranks", lambda: self._dtrpo(sft, pairs))
        if code:
            return code
        after = self._stage("evaluation", "held-out accuracy after dTRPO",
                            lambda: self._evaluate(self.out / "dtrpo" / "checkpoints"))
        self._summary(before, after)
        return 0

    def _stage(self, name: str, title: str, work):
        print(f"\n== {title}", flush=True)
        start = time.perf_counter()
        result = work()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    def _sft(self) -> Path:
        from dtrpo_mega.config import TrainConfig, build_dataclass
        from dtrpo_mega.data import build_preference_dataset
        from dtrpo_mega.data.synthetic import write_completions
        from dtrpo_mega.generation.model import model_folder
        from dtrpo_mega.training.loop import train

        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        answers = [_careless(self.task.answer(p), rng, cfg.slip_rate) for p in self.train_prompts]
        jsonl = write_completions(self.out / "data" / "sft.jsonl", self.task, self.train_prompts, answers)
        prefix = self.out / "data" / "sft"
        build_preference_dataset(jsonl, self.tokenizer, cfg.family, prefix, max_length=64)
        run_dir = self.out / "sft"
        train(build_dataclass(TrainConfig, {
            "model": {"family": cfg.family, "size": "tiny", "overrides": cfg.model_overrides},
            "data": {"path": str(prefix)},
            "objective": {"name": "sft"}, "scheduler": {"mode": "random_mask"},
            "optimizer": {"lr": cfg.sft_lr, "min_lr": cfg.sft_lr / 10, "warmup_steps": 10, "weight_decay": 0.0},
            "train": {"global_batch_size": cfg.sft_batch, "micro_batch_size": cfg.sft_batch,
                      "train_steps": cfg.sft_steps, "seed": cfg.seed},
            "checkpoint": {"dir": str(run_dir), "resume": False},
            "logging": {"dir": str(run_dir), "log_interval": max(cfg.sft_steps // 3, 1)},
        }))
        return model_folder(run_dir)

    def _decoder(self, model: Path, temperature: float):
        from dtrpo_mega.generation.model import PromptRenderer, family_sampler, load_for_decoding
        from dtrpo_mega.generation.sampler import DecodeConfig
        from dtrpo_mega.models.families import get_family

        policy = load_for_decoding(model)
        # the data's prompts are plain
        renderer = PromptRenderer.for_family(self.cfg.family, self.tokenizer, plain=True)
        rule = get_family(self.cfg.family).decoding  # the family's own reveal rule
        decode = DecodeConfig(self.cfg.max_new_tokens, rule.threshold, rule.tokens_per_step, temperature,
                              renderer.end_of_turn_id)
        return family_sampler(policy, decode), renderer

    def _evaluate(self, model: Path) -> dict:
        from dtrpo_mega.eval.runner import SamplerResponder, run_task
        from dtrpo_mega.eval.tasks import Example, TaskKind

        respond = SamplerResponder(*self._decoder(model, 0.0))
        examples = [Example(str(i), p, TaskKind.EXACT, self.task.answer(p)) for i, p in enumerate(self.held_out)]
        result = run_task("reverse", examples, respond, batch_size=64)
        shown = {p: o.response for p, o in zip(self.cfg.shown, result.outcomes)}  # held_out starts with them
        print(f"held-out accuracy {result.accuracy:.0%} ({sum(o.correct for o in result.outcomes)}/{len(examples)})")
        return {"accuracy": result.accuracy, "shown": shown}

    def _pairs(self, model: Path) -> Path:
        import torch

        from dtrpo_mega.data import build_preference_dataset
        from dtrpo_mega.data.synthetic import write_jsonl
        from dtrpo_mega.generation.pairs import sample_pairs

        cfg = self.cfg
        sampler, renderer = self._decoder(model, cfg.temperature)
        sampled = sample_pairs(sampler, renderer, self.train_prompts[: cfg.pair_prompts], self.task.is_correct,
                               cfg.samples_per_prompt, cfg.pairs_per_prompt, 128,
                               torch.Generator().manual_seed(cfg.seed))
        print(f"{sampled.samples} samples, {sampled.sample_accuracy:.0%} correct: {len(sampled.records)} (correct, "
              "incorrect) pairs")
        jsonl = write_jsonl(self.out / "data" / "pairs.jsonl", sampled.records)
        prefix = self.out / "data" / "pairs"
        build_preference_dataset(jsonl, self.tokenizer, cfg.family, prefix, max_length=64)
        return prefix

    def _dtrpo(self, sft: Path, pairs: Path) -> int:
        run_dir = self.out / "dtrpo"
        placed = [f"data.path={pairs}", f"model.load={sft}", f"checkpoint.dir={run_dir / 'checkpoints'}",
                  f"logging.dir={run_dir}"]
        # --standalone: rendezvous on a free local port, so another job on port 29500 is no clash
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}", "-m",
               "dtrpo_mega.train", "--config", self.config_path, *placed, *self.overrides]
        print("+ " + " ".join(cmd), flush=True)
        return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode

    def _summary(self, before: dict, after: dict) -> None:
        run_dir = self.out / "dtrpo"
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        print("\n== summary")
        print(f"held-out accuracy (greedy, {len(self.held_out)} prompts never trained on): "
              f"{before['accuracy']:.0%} after SFT -> {after['accuracy']:.0%} after dTRPO")
        span = min(10, len(history))
        for key in ("rewards/margins", "rewards/accuracies"):
            start, end = (sum(h[key] for h in part) / span for part in (history[:span], history[-span:]))
            print(f"{key}: {start:+.2f} -> {end:+.2f} (means of the first and last {span} dTRPO steps)")
        for prompt in self.cfg.shown:
            print(f"{prompt!r}\n  after SFT:   {before['shown'][prompt]}\n  after dTRPO: {after['shown'][prompt]}")
        print("time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.seconds.items()))
        print(f"metrics: {run_dir / 'metrics.jsonl'}; reward curves: {run_dir / 'rewards.png'}; "
              f"model: {run_dir / 'checkpoints'}")
        summary = {"before": before, "after": after, "seconds": self.seconds, "config": asdict(self.cfg)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    from dtrpo_mega.config import apply_override, build_dataclass, load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        print(f"error: config {args.config} not found (the demo config is examples/configs/demo_tiny.yaml in the "
              "repository; pass --config FILE)", file=sys.stderr)
        return 2
    demo_tree: dict = {}
    for override in (o for o in args.overrides if o.startswith("demo.")):
        apply_override(demo_tree, override)
    train_overrides = [o for o in args.overrides if not o.startswith("demo.")]
    try:
        cfg = build_dataclass(DemoConfig, demo_tree.get("demo", {}), "demo")
        load_config(args.config, train_overrides)  # refuse a bad setting before any work
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return Demo(cfg, args.config, train_overrides, args.nproc).run()
