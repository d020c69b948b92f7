"""`python tools/generate.py ...` = `dtrpo generate ...` (dtrpo_mega/eval/generate.py)."""

import sys

from dtrpo_mega.eval.generate import main

if __name__ == "__main__":
    sys.exit(main())
