"""The `dtrpo` command, `dtrpo COMMAND [options]`; `pip install` makes it, `python -m dtrpo_mega.cli` is the same.

Each command is the `main(argv)` of a module (COMMANDS), imported only when it runs, so
`dtrpo --help` needs no torch; tools/*.py run the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator

# command -> (module whose main(argv) runs it, one-line description)
COMMANDS = {
    "train": ("dtrpo_mega.train",
              "train a dLLM with dTRPO, a peer objective or masked-diffusion SFT (one process; torchrun for more)"),
    "preprocess": ("dtrpo_mega.data.preprocess",
                   "tokenize TRL-format preference or prompt-completion JSONL into the indexed dataset"),
    "precompute-reference": ("dtrpo_mega.training.precompute",
                             "run the frozen reference over the dataset once (sums or confidence)"),
    "convert": ("dtrpo_mega.convert.cli", "Hugging Face <-> megatron dist checkpoint: import, export, roundtrip"),
    "generate": ("dtrpo_mega.eval.generate",
                 "generate with a checkpoint (prompts rendered as its training data's, plain or chat)"),
    "evaluate": ("dtrpo_mega.eval.evaluate",
                 "exact match, code pass@1 and pairwise-preference accuracy of a checkpoint"),
    "lm-eval": ("dtrpo_mega.eval.lm_eval_cli", "lm-evaluation-harness, our dLLMs registered as model dtrpo_mega"),
    "demo": ("dtrpo_mega.demo", "what `make demo` runs: SFT, pairs of its own samples, dTRPO at TP=2 x PP=2 on 4 CPU "
             "ranks, held-out accuracy before and after"),
}


EPILOG = """examples:
  dtrpo demo                                                 what `make demo` runs
  dtrpo preprocess --input pairs.jsonl --tokenizer TOK --family fast_dllm_v2 --output data/pairs --max-length 2048
  dtrpo train --config CFG.yaml [section.key=value ...]      one process
  torchrun --nproc-per-node 8 --no-python dtrpo train --config CFG.yaml      several ranks \
(or: torchrun ... -m dtrpo_mega.train)
  dtrpo generate --ckpt runs/demo/dtrpo/checkpoints --prompt "reverse 4 8 15 16 23 :"   the demo's model
  dtrpo lm-eval --model dtrpo_mega --model_args pretrained=CKPT --tasks gsm8k        lm-evaluation-harness

`dtrpo COMMAND --help` shows a command's options.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dtrpo_mega")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtrpo",
                                     description="Train diffusion LLMs with dTRPO on megatron-core: data, "
                                     "training, reference precompute, checkpoint conversion, generation, evaluation.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dtrpo_mega {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


@contextlib.contextmanager
def _program_name(name: str) -> Iterator[None]:
    """argparse takes a parser's `prog` from sys.argv[0]: a command's usage line then reads `dtrpo NAME`."""
    saved = sys.argv[0] if sys.argv else None
    if saved is None:
        sys.argv.append(name)
    else:
        sys.argv[0] = name
    try:
        yield
    finally:
        if saved is None:
            sys.argv.pop(0)
        else:
            sys.argv[0] = saved


def main(argv: list[str] | None = None) -> int:
    """Run `dtrpo COMMAND ARGS...`; returns the command's exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _parser().parse_args(argv)  # --help, --version, or a usage error (exit 2)
        return 2  # unreachable: a known command is dispatched below
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    with _program_name(f"dtrpo {name}"):
        status = module.main(rest)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
