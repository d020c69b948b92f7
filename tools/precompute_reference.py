"""`torchrun ... tools/precompute_reference.py ...` = `torchrun ... --no-python dtrpo precompute-reference ...`
(dtrpo_mega/training/precompute.py)."""

from dtrpo_mega.training.precompute import main

if __name__ == "__main__":
    main()
