"""Evaluate a dLLM checkpoint on local JSONL tasks: exact match (numeric, multiple choice), code pass@1,
and pairwise-preference accuracy on held-out preference pairs.

  dtrpo evaluate --ckpt CKPT --tokenizer TOK --tasks gsm8k.jsonl [--tasks mbpp.jsonl ...]
                 [--out results.json] [--limit N] [--code-timeout 10] [--code-memory-mb 1024]
                 [decoding options as in `dtrpo generate`, --plain | --chat included]
  dtrpo evaluate --ckpt CKPT --tokenizer TOK --pairs HELD_OUT_PREFIX --reference REF_CKPT [--beta 0.1 --draws 4]

(`python tools/evaluate.py` takes the same options.) Text prompts are rendered as in `dtrpo
generate`: as the training data's prompts were (plain or chat) unless --plain or --chat says.
--pairs: a dataset written by `dtrpo preprocess`; a pair counts when the policy's dTRPO reward
(beta * trajectory log-ratio against --reference, averaged over --draws re-maskings) ranks chosen
above rejected.

Each task file is one task, named by its file name; its line format is in dtrpo_mega/eval/tasks.py.
Generated code runs in the sandbox of dtrpo_mega/eval/executor.py (read its isolation notes).
Prints a table and writes the scores, every response and the decoding settings (the prompt format
chosen included) to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from dtrpo_mega.eval import Limits, read_examples, run_task, table, write_json
    from dtrpo_mega.eval.runner import SamplerResponder
    from dtrpo_mega.eval.cli import add_decoder_options, build_decoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decoder_options(parser)
    parser.add_argument("--tasks", action="append", default=[], help="task JSONL file (repeatable)")
    parser.add_argument("--pairs", help="held-out preference pairs (a `dtrpo preprocess` prefix)")
    parser.add_argument("--reference", help="with --pairs: the reference checkpoint the rewards are measured against")
    parser.add_argument("--beta", type=float, default=0.1, help="with --pairs: the reward scale")
    parser.add_argument("--draws", type=int, default=4, help="with --pairs: re-maskings averaged per pair")
    parser.add_argument("--pair-seed", type=int, default=1234, help="with --pairs: seed of the re-masking")
    parser.add_argument("--out", default="eval_results.json", help="JSON results file")
    parser.add_argument("--limit", type=int, help="first N examples of each task")
    parser.add_argument("--code-timeout", type=float, default=10.0, help="wall-clock seconds per code run")
    parser.add_argument("--code-memory-mb", type=int, default=1024, help="address-space limit per code run")
    args = parser.parse_args(argv)
    limits = Limits(wall_seconds=args.code_timeout, cpu_seconds=max(1, int(args.code_timeout)),
                    memory_bytes=args.code_memory_mb << 20)
    if not args.tasks and not args.pairs:
        parser.error("give --tasks and/or --pairs")
    if args.pairs and not args.reference:
        parser.error("--pairs needs --reference")
    try:
        tasks = {Path(t).stem: read_examples(t)[: args.limit] for t in args.tasks}
        decoder = build_decoder(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    respond = SamplerResponder(decoder.sampler, decoder.renderer, decoder.generator)

    results = [run_task(name, examples, respond, decoder.batch_size, limits) for name, examples in tasks.items()]
    if args.pairs:
        results.append(pairwise(args, decoder.sampler.model))
    print(table(results))
    speed = dict(tokens_per_forward=respond.tokens_per_forward, tokens_per_second=respond.tokens_per_second)
    print(f"{speed['tokens_per_forward']:.2f} tokens/forward, {speed['tokens_per_second']:.1f} tokens/s")
    settings = {**{k: v for k, v in vars(args).items() if k != "tasks"}, "prompt_format": decoder.prompt_format}
    write_json(args.out, results, {"settings": settings, "tasks": args.tasks, **respond.totals, **speed})
    print(f"wrote {args.out}")
    return 0


def pairwise(args, policy):
    """Pairwise-preference accuracy of the policy on the held-out pairs."""
    from dtrpo_mega.data import DataConfig
    from dtrpo_mega.diffusion.scoring import Objective
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig
    from dtrpo_mega.generation.model import load_for_decoding
    from dtrpo_mega.eval.preference import preference_accuracy
    from dtrpo_mega.rows import RowBuilder

    cfg = policy.dllm_config
    reference = load_for_decoding(args.reference, args.dtype)
    dataset = DataConfig(path=args.pairs).open(cfg)
    rows = RowBuilder(cfg, SchedulerConfig(), Objective.DTRPO, seed=args.pair_seed)
    result = preference_accuracy(policy, reference, dataset, rows, beta=args.beta, draws=args.draws,
                                 batch_pairs=args.batch_size)
    print(f"pairwise preference: {result.accuracy:.4f} of {result.pairs} pairs ranked, mean reward margin "
          f"{result.mean_margin:+.4f} ({result.draws} draws)")
    return result.task_result(f"pairs:{Path(args.pairs).name}")
