"""`dtrpo demo` (`make demo`): train a tiny block-diffusion dLLM with dTRPO at TP=2 x PP=2 on 4 CPU ranks.

    dtrpo demo [--nproc 4] [--config examples/configs/demo_tiny.yaml] [section.key=value ...]

Writes the synthetic counting preferences and their tokenizer once (under the config's data
path, relative to the current directory), preprocesses them into the indexed format, removes the
previous demo run's checkpoints and metrics, then launches `torchrun -m dtrpo_mega.train --config
...`. Metrics, the reward-curve PNG and checkpoints go under runs/demo/. For resumable training,
run `dtrpo train` / `python -m dtrpo_mega.train` directly (or examples/train.sh). The default
config is the repository's examples/configs/demo_tiny.yaml (an installed wheel has no examples/:
give --config).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "demo_tiny.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        print(f"error: config {args.config} not found (the demo config is examples/configs/demo_tiny.yaml in the repository; "
              "pass --config FILE)", file=sys.stderr)
        return 2

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
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
