"""Command-line entry for training; see dtrpo_mega/train.py."""

from dtrpo_mega.train import main

if __name__ == "__main__":
    main()
