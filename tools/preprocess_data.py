"""`python tools/preprocess_data.py ...` = `dtrpo preprocess ...` (dtrpo_mega/data/preprocess.py)."""

import sys

from dtrpo_mega.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
