"""Attention cost of one [z~ ; y0] row: dense-bias TE against block-sparse flex, computed from the mask.

    python tools/attention_cost.py --out runs/attention_cost.json

A row of s tokens holds a prompt of P tokens and a response of L = (s - P) / 2: the clean half
is the prompt and response (P + L), the noisy half the response's blocks (L; the prompt's
blocks have no noisy copy). Block size 32 as Fast-dLLM v2; the mask is `may_attend`'s, counted
in 128 x 128 tiles a few query tiles at a time (never s x s). Costs are of one attention layer
of Fast-dLLM v2 1.5B (12 query heads, 2 KV groups, head size 128), one row, bf16:

- FLOPs: forward 4·d per computed (query, key) pair and head (QK^T, PV); backward 10·d (FA2:
  QK^T recomputed, dV, dP, dQ, dK). TE computes every tile (a bias can be anything); flex only
  the non-empty tiles, a partial tile whole. `useful` counts the allowed pairs only.
- HBM bytes, FA2-style kernels with no reuse between tiles in L2 (an upper bound on both sides):
  forward: per computed tile and head its K and V tiles; per head Q read, O and LSE written.
  Backward: per computed tile and head its Q and dO tiles, LSE and delta, and an fp32
  read-add-write of its dQ tile; per head K, V read, dK, dV written, O and dO read for delta.
  TE adds its bias tile (bf16) to every computed tile and head in both passes, and writes the
  s x s dBias that the backward computes for an 11ss bias although nothing needs it.
- Mask memory: TE's bias and dBias (s x s each, bf16); flex's BlockMask (int32 tile counts and
  indices, both directions, partial and full).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dtrpo_mega.diffusion.mask import MaskVariant, block_diffusion_sample, collate
from dtrpo_mega.perf.flops import TILE, tile_counts

BF16, FP32, INT32 = 2, 4, 4  # bytes
HEADS, GROUPS, HEAD_DIM = 12, 2, 128  # Fast-dLLM v2 1.5B attention


def row_layout(s: int, prompt: int, block: int):
    """The [z~ ; y0] layout of one row of exactly s tokens with a `prompt`-token prompt."""
    start = prompt // block * block
    if (s + start) % 2 or s <= prompt:
        raise ValueError(f"--prompt {prompt} and row length {s}: s + prompt must be even and s > prompt")
    n = (s + start) // 2
    tokens = torch.zeros(n, dtype=torch.long)
    _, layout = collate([block_diffusion_sample(tokens, tokens, prompt, block)], MaskVariant.BLOCK_DIFFUSION, block,
                        pad_id=0)
    return layout


def cost(s: int, counts: torch.Tensor) -> dict:
    """FLOPs and HBM bytes of one layer for TE (all tiles) and flex (non-empty tiles)."""
    tiles, nonempty = counts.numel(), int((counts > 0).sum())
    full = int((counts == TILE * TILE).sum())
    pairs = int(counts.sum())
    d, h = HEAD_DIM, HEADS
    tile_fwd = 2 * TILE * d * BF16  # K and V tiles
    tile_bwd = 2 * TILE * d * BF16 + 2 * TILE * FP32 + 2 * TILE * d * FP32  # Q, dO; LSE, delta; dQ read+write
    once_fwd = h * (2 * s * d * BF16 + s * FP32)  # Q read, O and LSE written
    once_bwd = h * (6 * s * d * BF16 + s * FP32)  # K, V, O, dO read; dK, dV written; delta written
    bias_tile = TILE * TILE * BF16

    def backend(computed: int, bias: bool) -> dict:
        return {
            "fwd_flops": 4 * d * h * TILE * TILE * computed,
            "bwd_flops": 10 * d * h * TILE * TILE * computed,
            "fwd_bytes": once_fwd + h * computed * (tile_fwd + bias * bias_tile),
            "bwd_bytes": once_bwd + h * computed * (tile_bwd + bias * bias_tile) + bias * s * s * BF16,
        }

    n_tiles = counts.shape[-1]
    return {
        "s": s,
        "density": pairs / (s * s),
        "tiles": tiles,
        "tiles_nonempty": nonempty,
        "tiles_full": full,
        "tiles_partial": nonempty - full,
        "useful": {"fwd_flops": 4 * d * h * pairs, "bwd_flops": 10 * d * h * pairs},
        "te": backend(tiles, True),
        "flex": backend(nonempty, False),
        "mask_bytes": {"te_bias_and_dbias": 2 * s * s * BF16, "flex_block_mask": 2 * 2 * (n_tiles + tiles) * INT32},
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768], help="row lengths s")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens P")
    parser.add_argument("--block", type=int, default=32, help="diffusion block size")
    parser.add_argument("--out", type=Path, default=Path("runs/attention_cost.json"))
    args = parser.parse_args(argv)
    rows = []
    for s in args.lengths:
        counts = tile_counts(row_layout(s, args.prompt, args.block))[0]
        rows.append(cost(s, counts))
    print_table(rows, args.prompt, args.block)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"prompt": args.prompt, "block": args.block, "tile": TILE, "heads": HEADS,
                                    "groups": GROUPS, "head_dim": HEAD_DIM, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return rows


def print_table(rows: list[dict], prompt: int, block: int) -> None:
    print(f"one attention layer, one row, prompt {prompt}, block {block}, tiles {TILE}x{TILE}; "
          "TFLOP and GB (1e9 bytes)")
    print("| s | allowed pairs | non-empty tiles (partial) | fwd TFLOP TE / flex / useful "
          "| bwd TFLOP TE / flex / useful | fwd GB TE / flex | bwd GB TE / flex | TE bias + dBias GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        te, fx, u = r["te"], r["flex"], r["useful"]
        print(
            f"| {r['s']} | {r['density']:.1%} | {r['tiles_nonempty'] / r['tiles']:.1%} ({r['tiles_partial']}) "
            f"| {te['fwd_flops'] / 1e12:.3f} / {fx['fwd_flops'] / 1e12:.3f} / {u['fwd_flops'] / 1e12:.3f} "
            f"| {te['bwd_flops'] / 1e12:.3f} / {fx['bwd_flops'] / 1e12:.3f} / {u['bwd_flops'] / 1e12:.3f} "
            f"| {te['fwd_bytes'] / 1e9:.2f} / {fx['fwd_bytes'] / 1e9:.2f} | {te['bwd_bytes'] / 1e9:.2f} / "
            f"{fx['bwd_bytes'] / 1e9:.2f} | {r['mask_bytes']['te_bias_and_dbias'] / 1e9:.2f} |"
        )


if __name__ == "__main__":
    main()
