"""`python tools/evaluate.py ...` = `dtrpo evaluate ...` (dtrpo_mega/eval/evaluate.py)."""

import sys

from dtrpo_mega.eval.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
