"""`dtrpo lm-eval ARGS...`: lm-evaluation-harness's own command line, with the `dtrpo_mega` model registered.

  dtrpo lm-eval --model dtrpo_mega --model_args pretrained=CKPT,tokenizer=TOK --tasks T [--include_path DIR] ...

Why a subcommand: lm-eval 0.4.x looks a `--model` name up in its own table (lm_eval/models/__init__.py) and among
the classes registered in the running process; it reads no entry points for models, and `--include_path` adds
tasks only. So a plain `lm_eval --model dtrpo_mega` cannot find ours: this command imports
`dtrpo_mega.eval.lm_eval_model` (which registers it) and then runs lm-eval's CLI entry on ARGS, so every lm-eval
option works as documented (`run` is implied, as with `lm_eval`). Needs the `lmeval` extra. docs/lm_eval.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as error:
        print(f"error: lm-evaluation-harness is not installed ({error}): pip install 'dtrpo_mega[lmeval]'",
              file=sys.stderr)
        return 2
    import dtrpo_mega.eval.lm_eval_model  # noqa: F401  (registers the model "dtrpo_mega")

    saved = sys.argv
    sys.argv = ["lm-eval", *(saved[1:] if argv is None else argv)]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
