"""`python tools/demo.py ...` (`make demo`) = `dtrpo demo ...` (dtrpo_mega/demo.py)."""

import sys

from dtrpo_mega.demo import main

if __name__ == "__main__":
    sys.exit(main())
