"""`make demo`: train a tiny block-diffusion dLLM with dTRPO at TP=2 x PP=2 on 4 CPU ranks.

    python tools/demo.py [--nproc 4] [--config examples/configs/demo_tiny.yaml] [section.key=value ...]

Writes the synthetic counting preferences and their tokenizer once (under the config's data
path), preprocesses them into the indexed format, removes the previous demo run's checkpoints
and metrics, then launches `torchrun -m dtrpo_mega.train --config ...`. Metrics, the
reward-curve PNG and checkpoints go under runs/demo/. For resumable training, run
`python -m dtrpo_mega.train` directly (or examples/train.sh).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--config", default=str(REPO / "examples" / "configs" / "demo_tiny.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from dtrpo_mega.config import load_config
    from dtrpo_mega.synthetic import prepare_counting_dataset

    cfg = load_config(args.config, args.overrides)
    prepare_counting_dataset(cfg.data.path)
    # A demo starts afresh: the previous demo run's checkpoints and metrics go (data is kept).
    previous = [Path(cfg.checkpoint.dir)] if cfg.checkpoint.dir else []
    previous += [Path(cfg.logging.dir) / name for name in ("metrics.jsonl", "rewards.png")]
    for path in filter(Path.exists, previous):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", "-m", "dtrpo_mega.train",
           "--config", args.config, *args.overrides]
    print("+ " + " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode)


if __name__ == "__main__":
    main()
