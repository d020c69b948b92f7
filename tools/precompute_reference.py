"""Run the frozen reference over the whole dataset once.

    torchrun --nproc-per-node N tools/precompute_reference.py sums --out ref.safetensors --epochs E --config CFG [k=v ...]
    torchrun --nproc-per-node N tools/precompute_reference.py confidence --out conf.safetensors --config CFG [k=v ...]

`sums` feeds `reference.mode=precomputed reference.cache=ref.safetensors` (E epochs of re-masked
states); `confidence` feeds `scheduler.order=ref_confidence data.ref_confidence=conf.safetensors`.
Use the training run's config: the files are keyed by the data fingerprint, seed, scheduler,
objective, model and reference weights, and training refuses a file made for another run.
"""

import argparse

from dtrpo_mega.config import load_config
from dtrpo_mega.parallel.runtime import shutdown
from dtrpo_mega.training.precompute import precompute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("product", choices=("sums", "confidence"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of re-masked states (sums)")
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    precompute(load_config(args.config, args.overrides), args.product, args.out, args.epochs)
    shutdown()


if __name__ == "__main__":
    main()
