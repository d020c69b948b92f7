"""One seed of the small-scale reproduction, stage by stage, each stage's result kept on disk.

1. data: SFT prompts, preference prompts and held-out prompts (the same held-out set for every
   seed, never seen in training);
2. masked-diffusion SFT of a tiny block-diffusion model from scratch;
3. held-out accuracy of the SFT model (greedy, the model's own decoder);
4. samples from the SFT model (temperature, trajectories recorded), paired by correctness;
5. per method (dTRPO and its peers), the same optimizer steps from the SFT model, then held-out
   accuracy and the training cost (forward passes per pair, wall time).

A finished stage writes a JSON file and is skipped when the pipeline runs again with the same
config (another config is refused), so an interrupted reproduction resumes where it stopped.

    python examples/reproduce_small/pipeline.py --config CFG.yaml --seed S --out DIR [section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dtrpo_mega.config import TrainConfig, build_dataclass, load_dataclass
from dtrpo_mega.data import build_preference_dataset
from dtrpo_mega.data.synthetic import ListTask, write_completions, write_examples, write_jsonl, write_tokenizer
from dtrpo_mega.eval.runner import SamplerResponder, run_task
from dtrpo_mega.eval.tasks import Example, TaskKind
from dtrpo_mega.generation.model import PromptRenderer, family_sampler, load_for_decoding, model_folder
from dtrpo_mega.generation.pairs import sample_pairs
from dtrpo_mega.generation.sampler import DecodeConfig, Sampler
from dtrpo_mega.training.loop import train

HELD_OUT_SEED = 10_000  # the held-out prompts are the same for every seed


@dataclass
class StageSettings:
    steps: int
    lr: float
    global_batch_size: int
    micro_batch_size: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1


@dataclass
class ReproConfig:
    family: str = "fast_dllm_v2"
    size: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    task: ListTask = field(default_factory=ListTask)
    sft_examples: int = 8192
    sft: StageSettings = field(default_factory=lambda: StageSettings(1000, 3e-3, 64, 64, 50))
    sample_prompts: int = 2048  # prompts the SFT model answers to make preference pairs
    samples_per_prompt: int = 4
    temperature: float = 0.7
    pairs_per_prompt: int = 2
    preference: StageSettings = field(default_factory=lambda: StageSettings(100, 3e-4, 16, 16, 5))
    beta: float = 0.1
    nll_weight: float = 0.0  # lambda of the NLL term on chosen responses (each method's own likelihood estimate)
    vrpo_samples: int = 8
    methods: list = field(default_factory=lambda: list(METHODS))
    held_out_prompts: int = 512
    threshold: float = 0.9  # decoding: Fast-dLLM v2's confidence threshold
    max_new_tokens: int = 16
    batch_size: int = 64  # decoding batch

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {list(METHODS)}")


# Method -> config sections on top of the shared preference stage. Pairs carry the sampler's
# reveal steps, so dTRPO and the exact objective score the trajectories that produced them.
METHODS = {
    "dtrpo": {"objective": {"name": "dtrpo"}, "scheduler": {"mode": "logged"}},
    "vrpo": {"objective": {"name": "vrpo"}, "scheduler": {"mode": "random_mask"}},
    "exact_trajectory": {"objective": {"name": "exact_trajectory"}, "scheduler": {"mode": "logged"}},
    "mean_field": {"objective": {"name": "mean_field"}},
}


def load_repro_config(path: str | Path | None, overrides: list[str] = ()) -> ReproConfig:
    return load_dataclass(ReproConfig, path, overrides)


def _cached(path: Path, make) -> dict:
    """A stage's result: read back if it finished before, else made and written atomically."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)
    return value


class SeedRun:
    def __init__(self, cfg: ReproConfig, seed: int, root: Path):
        self.cfg, self.seed, self.dir = cfg, seed, Path(root) / f"seed{seed}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_same_config()
        self.tokenizer = write_tokenizer(self.dir / "tokenizer.json")
        task = cfg.task
        self.held_out = task.problems(cfg.held_out_prompts, HELD_OUT_SEED)
        unseen = frozenset(self.held_out)
        self.sft_prompts = task.problems(cfg.sft_examples, seed * 2 + 1, exclude=unseen)
        self.pair_prompts = task.problems(cfg.sample_prompts, seed * 2 + 2, exclude=unseen)
        write_examples(self.dir / "held_out.jsonl", self.cfg.task, self.held_out)

    def _check_same_config(self) -> None:
        """Kept stages are only reused by the config that made them."""
        path, current = self.dir / "config.json", json.loads(json.dumps(asdict(self.cfg)))
        if not path.is_file():
            path.write_text(json.dumps(current, indent=1) + "\n")
            return
        kept = json.loads(path.read_text())
        differ = sorted(k for k in current.keys() | kept.keys() if current.get(k) != kept.get(k))
        if differ:
            raise ValueError(f"{self.dir} holds stages made with another config ({', '.join(differ)} differ): "
                             "choose another output folder, or delete this one to start over")

    def run(self) -> dict:
        sft = _cached(self.dir / "sft.json", self._sft)
        pairs = _cached(self.dir / "pairs.json", lambda: self._pairs(sft["model"]))
        methods = {m: _cached(self.dir / f"{m}.json", lambda m=m: self._preference(m, sft["model"], pairs["dataset"]))
                   for m in self.cfg.methods}
        return {"seed": self.seed, "config": asdict(self.cfg), "sft": sft, "pairs": pairs, "methods": methods}

    # --- stages -----------------------------------------------------------------------------

    def _sft(self) -> dict:
        jsonl = write_completions(self.dir / "sft.jsonl", self.cfg.task, self.sft_prompts)
        prefix = self.dir / "data" / "sft"
        build_preference_dataset(jsonl, self.tokenizer, self.cfg.family, prefix, max_length=64)
        history, seconds = self._train("sft", {"objective": {"name": "sft"}, "scheduler": {"mode": "random_mask"}},
                                       prefix, self.cfg.sft)
        model = str(model_folder(self.dir / "sft"))
        return {"model": model, "loss_end": history[-1]["loss"], "train_seconds": seconds, **self._accuracy(model)}

    def _pairs(self, model: str) -> dict:
        cfg = self.cfg
        sampler, renderer = self._sampler(model, cfg.temperature)
        sampled = sample_pairs(sampler, renderer, self.pair_prompts, cfg.task.is_correct, cfg.samples_per_prompt,
                               cfg.pairs_per_prompt, cfg.batch_size, torch.Generator().manual_seed(self.seed))
        if len(sampled.records) < cfg.preference.global_batch_size:
            raise RuntimeError(f"seed {self.seed}: {len(sampled.records)} (correct, incorrect) pairs from "
                               f"{sampled.samples} samples ({sampled.correct} correct), fewer than "
                               f"preference.global_batch_size={cfg.preference.global_batch_size}: train SFT longer, or "
                               "sample more prompts or at another temperature")
        jsonl = write_jsonl(self.dir / "pairs.jsonl", sampled.records)
        prefix = self.dir / "data" / "pairs"
        build_preference_dataset(jsonl, self.tokenizer, cfg.family, prefix, max_length=64)
        return {"dataset": str(prefix), "pairs": len(sampled.records), "samples": sampled.samples,
                "sample_accuracy": sampled.sample_accuracy}

    def _preference(self, method: str, model: str, dataset: str) -> dict:
        sections = {**METHODS[method], "loss": {"beta": self.cfg.beta, "nll_weight": self.cfg.nll_weight}}
        sections["objective"] = {**sections["objective"], "vrpo_samples": self.cfg.vrpo_samples}
        history, seconds = self._train(method, sections, dataset, self.cfg.preference, {"load": model})
        out = self._accuracy(str(model_folder(self.dir / method)))
        rows = sum(h["rows_per_pair"] for h in history) / len(history)
        return {
            **out,
            "forward_passes_per_pair": 2 * rows,  # policy and the resident reference score the same rows
            "train_seconds": seconds,
            "step_seconds": sum(h["step_s"] for h in history) / len(history),
            "loss_end": history[-1]["loss"],
            "reward_accuracy_end": sum(h["rewards/accuracies"] for h in history[-10:]) / len(history[-10:]),
        }

    # --- helpers ----------------------------------------------------------------------------

    def _train(self, name: str, sections: dict, data: Path | str, stage: StageSettings,
               model: dict | None = None) -> tuple[list[dict], float]:
        """Train in this process (a world of one); returns the per-step metrics and the summed step time.

        `model`: the model section; by default a new model of the configured family and size."""
        run_dir = self.dir / name
        tree = {
            **sections,
            "model": model or {"family": self.cfg.family, "size": self.cfg.size, "overrides": self.cfg.model_overrides},
            "data": {"path": str(data)},
            "optimizer": {"lr": stage.lr, "min_lr": stage.lr * stage.min_lr_ratio, "warmup_steps": stage.warmup_steps},
            "train": {"global_batch_size": stage.global_batch_size, "micro_batch_size": stage.micro_batch_size,
                      "train_steps": stage.steps, "seed": self.seed},
            "checkpoint": {"dir": str(run_dir), "resume": False},
            "logging": {"dir": str(run_dir), "progress_bar": False, "log_interval": max(stage.steps // 5, 1)},
        }
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a stage that did not finish starts over
        history = train(build_dataclass(TrainConfig, tree))
        if len(history) != stage.steps:
            raise RuntimeError(f"seed {self.seed}: {name} stopped after {len(history)} of {stage.steps} steps "
                               "(SIGTERM); run again to redo this stage")
        return history, sum(h["step_s"] for h in history)

    def _sampler(self, model: str, temperature: float) -> tuple[Sampler, PromptRenderer]:
        policy = load_for_decoding(model)
        # as the data renders text prompts
        renderer = PromptRenderer.for_family(self.cfg.family, self.tokenizer, plain=True)
        decode = DecodeConfig(self.cfg.max_new_tokens, self.cfg.threshold, None, temperature, renderer.end_of_turn_id)
        return family_sampler(policy, decode), renderer

    def _accuracy(self, model: str) -> dict:
        respond = SamplerResponder(*self._sampler(model, 0.0))
        examples = [Example(str(i), p, TaskKind.EXACT, self.cfg.task.answer(p)) for i, p in enumerate(self.held_out)]
        start = time.perf_counter()
        result = run_task("sorting", examples, respond, self.cfg.batch_size)
        return {"accuracy": result.accuracy, "tokens_per_forward": respond.tokens_per_forward,
                "eval_seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML of ReproConfig fields")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="field=value or section.field=value")
    args = parser.parse_args(argv)
    result = SeedRun(load_repro_config(args.config, args.overrides), args.seed, Path(args.out)).run()
    (Path(args.out) / f"seed{args.seed}" / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    from dtrpo_mega.parallel.runtime import shutdown

    shutdown()


if __name__ == "__main__":
    main()
