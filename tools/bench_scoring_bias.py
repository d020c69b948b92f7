"""How far the one-pass layout is from the exact trajectory log-ratio for full-attention families.

    python tools/bench_scoring_bias.py [--families llada dream --seeds 8 --settings 4:1:5:10 ...] \
[--out runs/bench_scoring_bias.json]

dTRPO estimates l = log pi_theta(trajectory) - log pi_ref(trajectory) by scoring one sampled
step s_b per block with weight S_b. LLaDA's and Dream's decoders see every later block as [M],
which a one-pass `[z~ ; y0]` row cannot show, so `one_pass` is biased there; `per_block` (one
plain row per scored block, later blocks [M]) is exact. On two tiny float64 random models
(policy seed 1, reference seed 2, 2 layers) and random sequences, for each setting
(block size = sub-block size, tokens per step, prompt and response lengths): the exact l (every
decoding step run on its own), and per layout the mean over ALL step choices (the product of
range(S_b)) of the estimate: bias = mean - exact (mean and max |bias| over sequences, and mean
|bias| / mean |exact|), the spread of the estimate over step choices (std, averaged over
sequences), and the rows (and tokens) per sequence each layout costs. A setting whose step
choices exceed --max-combos is skipped. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import torch

from bench_common import host, write_results

# block size (= sub-block size), tokens per step, prompt length, response length: 2-3 blocks,
# prompts not a multiple of the block (blocks start at the prompt's end), a short last block.
SETTINGS = ["4:1:5:10", "4:2:5:12", "8:1:5:12", "8:2:5:18"]


def models(family: str, block: int):
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config

    cfg = model_config(family, "tiny", num_layers=2, block_size=block, sub_block_size=block)
    torch.manual_seed(1)
    policy = build_model(cfg).double().eval()
    torch.manual_seed(2)
    reference = build_model(cfg).double().eval()
    return cfg, policy, reference


def batch_log_ratio(policy, reference, samples, labels, weights, variant, block_size) -> np.ndarray:
    """Per sample: sum of weight * (log pi - log pi_ref) at the labelled logits, both models batched."""
    from dtrpo_mega.diffusion.mask import collate

    tokens, layout = collate(samples, variant, block_size, pad_id=0)
    labels, weights = torch.stack(labels), torch.stack(weights)
    n = labels.shape[1]
    with torch.no_grad():
        lp, lr = (m(tokens, layout)[:, :n].log_softmax(-1).gather(-1, labels[..., None])[..., 0]
                  for m in (policy, reference))
    return torch.where(weights != 0, weights * (lp - lr), 0.0).sum(-1).numpy()


def exact_log_ratio(policy, reference, seq, steps) -> float:
    """Every decoding step on its own (full attention: the whole state, later blocks [M]); the
    scheduler's log q terms are the same for both models and cancel."""
    from dtrpo_mega.diffusion.mask import plain_sample
    from dtrpo_mega.diffusion.trajectory import response_blocks

    spec = policy.dllm_config.diffusion
    tokens, shift = torch.from_numpy(seq.tokens), int(spec.logits_shift)
    blocks = response_blocks(seq.prompt_len, len(tokens), spec.block_size, spec.origin(seq.prompt_len))
    samples, labels, weights = [], [], []
    for b, block in enumerate(blocks):
        idx = np.asarray(block)
        for s in range(int(steps[idx].max()) + 1):
            state = tokens.clone()
            state[idx[steps[idx] >= s]] = spec.mask_token_id
            for later in blocks[b + 1 :]:
                state[np.asarray(later)] = spec.mask_token_id
            lab, w = torch.zeros(len(tokens), dtype=torch.long), torch.zeros(len(tokens), dtype=torch.float64)
            for pos in idx[steps[idx] == s]:
                lab[pos - shift], w[pos - shift] = tokens[pos], 1.0
            samples.append(plain_sample(state, spec.origin(seq.prompt_len)))
            labels.append(lab)
            weights.append(w)
    return float(batch_log_ratio(policy, reference, samples, labels, weights, spec.attention, spec.block_size).sum())


def estimates(policy, reference, seq, steps, sched, combos, layout) -> tuple[np.ndarray, int, int]:
    """The estimate for every step choice (identical rows scored once), rows and tokens per estimate."""
    from dtrpo_mega.diffusion.mask import MaskVariant
    from dtrpo_mega.diffusion.scoring import per_block_rows, scoring_row
    from dtrpo_mega.diffusion.spec import ScoringLayout
    from dtrpo_mega.diffusion.trajectory import remask_at_steps, response_blocks

    spec = policy.dllm_config.diffusion
    origin = spec.origin(seq.prompt_len)
    blocks = response_blocks(seq.prompt_len, len(seq.tokens), spec.block_size, origin)
    variant = MaskVariant.BLOCK_DIFFUSION if layout == ScoringLayout.ONE_PASS else spec.attention
    index, unique, plan = {}, [], []
    for combo in combos:
        row = remask_at_steps(seq.tokens, steps, seq.prompt_len, spec.block_size, spec.mask_token_id, sched,
                              list(combo), origin)
        rows = ([row] if layout == ScoringLayout.ONE_PASS
                else per_block_rows(row, seq.tokens, blocks, spec.mask_token_id))
        for r in rows:
            if index.setdefault((r.noisy.tobytes(), r.weights.tobytes()), len(unique)) == len(unique):
                unique.append(r)
        plan.append([index[(r.noisy.tobytes(), r.weights.tobytes())] for r in rows])
    scored = [scoring_row(seq.tokens, r, seq.prompt_len, spec, layout) for r in unique]
    values = batch_log_ratio(policy, reference, *map(list, zip(*scored)), variant, spec.block_size)
    return np.array([values[p].sum() for p in plan]), len(plan[0]), sum(len(scored[i][0].tokens) for i in plan[0])


def run_setting(family: str, setting: str, seeds: int, max_combos: int) -> dict:
    from dtrpo_mega.diffusion.scoring import SequenceSpec, trajectory_steps
    from dtrpo_mega.diffusion.spec import ScoringLayout
    from dtrpo_mega.diffusion.trajectory import SchedulerConfig, sample_rng, steps_per_block

    block, k, prompt, response = map(int, setting.split(":"))
    cfg, policy, reference = models(family, block)
    spec, sched = cfg.diffusion, SchedulerConfig(tokens_per_step=k)
    out = {"family": family, "block_size": block, "tokens_per_step": k, "prompt_len": prompt, "response_len": response,
           "per_seed": []}
    cost = {}
    for seed in range(seeds):
        tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size - 1, prompt + response)
        seq = SequenceSpec(tokens, prompt, index=seed, role=0)
        steps = trajectory_steps(seq, spec, sched, sample_rng(0, 0, seed, 0))
        per_block = steps_per_block(steps, prompt, block, spec.origin(prompt))
        combos = list(itertools.product(*[range(s) for s in per_block]))
        out.update(steps_per_block=per_block, combos=len(combos), exact_rows=sum(per_block))
        if len(combos) > max_combos:
            return {**out, "skipped": f"{len(combos)} step choices > --max-combos {max_combos}"}
        exact = exact_log_ratio(policy, reference, seq, steps)
        result = {"seed": seed, "exact": exact}
        for layout in ScoringLayout:
            values, rows, tokens_per_row = estimates(policy, reference, seq, steps, sched, combos, layout)
            cost[layout.value] = {"rows": rows, "tokens": tokens_per_row}
            result[layout.value] = {"mean": float(values.mean()), "bias": float(values.mean() - exact),
                                    "std": float(values.std())}
        out["per_seed"].append(result)
    mean_exact = float(np.mean([abs(r["exact"]) for r in out["per_seed"]]))
    out["mean_abs_exact"] = mean_exact
    for layout in ScoringLayout:
        bias = np.abs([r[layout.value]["bias"] for r in out["per_seed"]])
        out[layout.value] = {
            **cost[layout.value],
            "mean_abs_bias": float(bias.mean()), "max_abs_bias": float(bias.max()),
            "rel_bias": float(bias.mean() / mean_exact),
            "mean_std": float(np.mean([r[layout.value]["std"] for r in out["per_seed"]])),
        }
    return out


def table(results: list[dict]) -> str:
    head = (f"{'family':<7}{'block':>6}{'k':>3}{'prompt':>7}{'resp':>5}  "
            f"{'S_b':<10}{'choices':>8}{'exact rows':>11}{'mean|l|':>9}  "
            f"{'layout':<10}{'rows':>5}{'tokens':>7}{'mean|bias|':>11}{'max|bias|':>10}{'rel':>9}{'std':>9}"
            f"{'|bias|/std':>11}")
    lines = [head]
    for r in results:
        lead = (f"{r['family']:<7}{r['block_size']:>6}{r['tokens_per_step']:>3}{r['prompt_len']:>7}"
                f"{r['response_len']:>5}  {','.join(map(str, r['steps_per_block'])):<10}{r['combos']:>8}")
        if "skipped" in r:
            lines.append(f"{lead}  skipped: {r['skipped']}")
            continue
        for i, layout in enumerate(("one_pass", "per_block")):
            x = r[layout]
            start = f"{lead}{r['exact_rows']:>11}{r['mean_abs_exact']:>9.4f}" if i == 0 else " " * (len(lead) + 20)
            lines.append(f"{start}  "
                         f"{layout:<10}{x['rows']:>5}{x['tokens']:>7}{x['mean_abs_bias']:>11.2e}"
                         f"{x['max_abs_bias']:>10.2e}{x['rel_bias']:>9.2e}{x['mean_std']:>9.4f}"
                         f"{x['mean_abs_bias'] / x['mean_std'] if x['mean_std'] else math.nan:>11.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["llada", "dream"])
    parser.add_argument("--settings", nargs="+", default=SETTINGS,
                        help="block:tokens_per_step:prompt:response (block = sub-block)")
    parser.add_argument("--seeds", type=int, default=8, help="random sequences per setting")
    parser.add_argument("--max-combos", type=int, default=64, help="skip a setting with more step choices than this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_scoring_bias.json")
    args = parser.parse_args(argv)

    initialize(ParallelConfig(), seed=0)
    torch.set_num_threads(args.threads)
    results = [run_setting(f, s, args.seeds, args.max_combos) for f in args.families for s in args.settings]
    machine = host()
    print(f"trajectory log-ratio estimate against the exact one, tiny float64 models, {args.seeds} sequences per "
          f"setting ({machine})")
    print("mean/max |bias| over sequences of (mean over all step choices - exact); rel = mean|bias| / mean|exact|; std "
          "over step choices\n")
    print(table(results))
    payload = {"args": vars(args), "machine": machine, "results": results}
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
