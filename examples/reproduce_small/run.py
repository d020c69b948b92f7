"""The small-scale reproduction in one command (CPU): SFT from scratch, self-sampled pairs, dTRPO
against VRPO, the exact trajectory objective and mean-field DPO, held-out accuracy before and after.

    python examples/reproduce_small/run.py [--seeds 0 1 2] [--jobs 2] [--out runs/reproduce_small]
                                           [--report docs/results.md] [--config CFG] [field=value ...]

Each seed runs in its own process (`python examples/reproduce_small/pipeline.py`), `--jobs` at a time,
each with its share of the CPU cores; its log is OUT/seedS.log. Finished stages are kept, so a
rerun resumes. The report (tables) and its plot (gain against cost) go to --report.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def run_seeds(args) -> None:
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    pending, running = list(args.seeds), {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            cmd = [sys.executable, str(HERE / "pipeline.py"), "--config", args.config, "--seed", str(seed), "--out",
                   str(out), *args.overrides]
            log = (out / f"seed{seed}.log").open("w")
            print(f"seed {seed}: started, log {log.name}", flush=True)
            running[seed] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log,
                             time.time())
        time.sleep(1)
        for seed, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[seed]
            if proc.returncode:
                for other, *_ in running.values():
                    other.terminate()
                tail = Path(log.name).read_text().splitlines()[-40:]
                sys.exit(f"seed {seed} failed (exit {proc.returncode}); the end of {log.name}:\n" + "\n".join(tail))
            print(f"seed {seed}: done in {time.time() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "config.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once")
    parser.add_argument("--out", default=str(REPO / "runs" / "reproduce_small"))
    parser.add_argument("--report", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("overrides", nargs="*", help="ReproConfig field=value (e.g. preference.steps=50)")
    args = parser.parse_args()
    if len(args.seeds) < 3:
        print(f"note: {len(args.seeds)} seed(s); the report's variance needs at least 3", flush=True)
    run_seeds(args)

    from results import load_seeds, write_report  # beside this script

    command = "python examples/reproduce_small/run.py " + shlex.join(sys.argv[1:])
    report, png = write_report(load_seeds(Path(args.out), args.seeds), Path(args.report), command.strip())
    print(f"report: {report}\nplot: {png}")


if __name__ == "__main__":
    main()
