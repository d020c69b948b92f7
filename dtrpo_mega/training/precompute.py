"""One pass of the frozen reference over the whole dataset (any parallel layout, torchrun).

Two products, both keyed by what decides them and refused by training when the key differs:
- `sums`: the reference's weighted log-prob sums per (epoch, pair, role), for
  `reference.mode=precomputed`;
- `confidence`: the reference's log-prob of every response token with all of its block still
  masked (the decoder's first look at the block), for `scheduler.order=ref_confidence`. It is
  frozen data, not a function of theta, so the ratio reduction stays exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as dist

from dtrpo_mega.data.keyed import save_keyed
from dtrpo_mega.diffusion.scoring import exact_rows, logit_index, scoring_row
from dtrpo_mega.diffusion.spec import ScoringLayout
from dtrpo_mega.parallel.runtime import Runtime
from dtrpo_mega.rows import ScoredRows, ScoredSample
from dtrpo_mega.training.reference import ResidentReference
from dtrpo_mega.training.setup import Run, build_reference_model, confidence_key, reference_key, setup_run
from dtrpo_mega.training.step import forward_backward


def _my_pairs(run: Run) -> list[np.ndarray]:
    """This DP rank's share of all pairs, in micro-batches."""
    share = np.array_split(np.arange(len(run.dataset)), run.runtime.dp)[run.runtime.dp_rank]
    size = run.cfg.train.micro_batch_size
    return [share[i : i + size] for i in range(0, len(share), size)]


def _gather_on_rank0(items: list, runtime: Runtime) -> list | None:
    """Items of the last-stage, TP-rank-0 ranks, concatenated on global rank 0."""
    mine = items if runtime.is_last_stage and runtime.tp_rank == 0 else []
    everyone = [None] * dist.get_world_size()
    dist.gather_object(mine, everyone if dist.get_rank() == 0 else None, dst=0)
    return [x for part in everyone for x in part] if dist.get_rank() == 0 else None


def precompute_sums(run: Run, epochs: int, out) -> None:
    key = reference_key(run)
    reference = ResidentReference(build_reference_model(run))
    found = []
    for epoch in range(epochs):
        for idx in _my_pairs(run):
            [rows] = reference.with_reference(
                run.context_shards([run.rows.micro_batch([run.dataset[int(i)] for i in idx], epoch)]))
            if rows.ref_sums is not None:
                found += [(epoch, int(i), s) for i, s in zip(idx, rows.ref_sums)]
    gathered = _gather_on_rank0(found, run.runtime)
    if gathered is not None:
        sums = torch.full((epochs, len(run.dataset), 2), float("nan"), dtype=torch.float64)
        for epoch, i, s in gathered:
            sums[epoch, i] = s
        if torch.isnan(sums).any():
            raise RuntimeError("some pairs got no reference sums")
        save_keyed(out, {"ref_sums": sums}, key)
    dist.barrier()


def _token_logps_loss(rows: ScoredRows, token_ce: torch.Tensor):
    return token_ce.sum() * 0, torch.tensor(1, dtype=torch.int), {"token_logps": -token_ce.detach().double()}


def precompute_confidence(run: Run, out) -> None:
    """Per response token: log pi_ref(y_i | its block fully masked, earlier blocks clean)."""
    if run.runtime.cp > 1:
        raise ValueError("tools/precompute_reference.py confidence runs with parallel.context_parallel_size=1")
    key = confidence_key(run)
    model = build_reference_model(run).eval()
    model_cfg, found = run.model_config, []
    one_pass = dataclasses.replace(run.rows, layout=ScoringLayout.ONE_PASS)  # the decoder's first look at each block
    for idx in _my_pairs(run):
        pairs = [run.dataset[int(i)] for i in idx]
        per_pair, where = [], []
        for pair in pairs:
            per_pair.append([])
            for seq in run.rows.sequences(pair):
                steps = np.where(np.arange(len(seq.tokens)) >= seq.prompt_len, 0, -1)
                row = exact_rows(seq.tokens, steps, model_cfg.mask_token_id)[0]
                per_pair[-1].append(ScoredSample(*scoring_row(seq.tokens, row, seq.prompt_len, model_cfg.diffusion),
                                                 seq.role))
                where.append(seq)
        rows = one_pass.row_per_sample(pairs, per_pair, epoch=0)
        with torch.no_grad():
            reports = forward_backward(model, [rows], _token_logps_loss, forward_only=True)
        for report in reports:
            for r, seq in enumerate(where):
                n = len(seq.tokens)
                conf = [float(report["token_logps"][r, logit_index(j, n, seq.prompt_len, model_cfg.diffusion)])
                        for j in range(seq.prompt_len, seq.revealed_length)]
                found.append((seq.index, seq.role, conf))
    gathered = _gather_on_rank0(found, run.runtime)
    if gathered is not None:
        lengths = torch.zeros(len(run.dataset), 2, dtype=torch.long)
        for i, role, conf in gathered:
            lengths[i, role] = len(conf)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.flatten().cumsum(0)])
        values = torch.zeros(int(offsets[-1]), dtype=torch.float64)
        for i, role, conf in gathered:
            start = offsets[2 * i + role]
            values[start : start + len(conf)] = torch.tensor(conf, dtype=torch.float64)
        save_keyed(out, {"confidence": values, "offsets": offsets}, key)
    dist.barrier()


def precompute(cfg, product: str, out, epochs: int = 1) -> None:
    if not cfg.objective.name.is_preference:
        raise ValueError("objective.name=sft has no reference to precompute")
    run = setup_run(cfg)
    if product == "sums":
        precompute_sums(run, epochs, out)
    else:
        precompute_confidence(run, out)


USAGE = """Run the frozen reference over the whole dataset once: `dtrpo precompute-reference` \
(tools/precompute_reference.py).

    torchrun --nproc-per-node N --no-python dtrpo precompute-reference sums --out ref.safetensors --epochs E \
--config CFG [k=v ...]
    torchrun --nproc-per-node N --no-python dtrpo precompute-reference confidence --out conf.safetensors \
--config CFG [k=v ...]

(`dtrpo precompute-reference ...` alone runs one process.) `sums` feeds `reference.mode=precomputed
reference.cache=ref.safetensors` (E epochs of re-masked states); `confidence` feeds
`scheduler.order=ref_confidence data.ref_confidence=conf.safetensors`. Use the training run's
config: the files are keyed by the data fingerprint, seed, scheduler, objective, model and
reference weights, and training refuses a file made for another run.
"""


def main(argv: list[str] | None = None) -> None:
    import argparse

    from dtrpo_mega.config import load_config
    from dtrpo_mega.parallel.runtime import shutdown

    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("product", choices=("sums", "confidence"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of re-masked states (sums)")
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    precompute(load_config(args.config, args.overrides), args.product, args.out, args.epochs)
    shutdown()
