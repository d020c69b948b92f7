"""`python tools/convert_checkpoint.py ...` = `dtrpo convert ...` (dtrpo_mega/convert/cli.py)."""

import sys

from dtrpo_mega.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
