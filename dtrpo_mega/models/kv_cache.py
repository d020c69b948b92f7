"""Keys and values of finished clean blocks, for block-diffusion decoding (the decoder's block cache).

Under block-causal attention a clean block's keys and values depend only on itself and earlier
clean blocks, so once a block is finished they never change. A decoder call therefore forwards
only the span after its row's cache (finished blocks not cached yet, then the current block),
attends to the cached keys as well, and appends the keys and values of the span's leading
finished blocks. The logits equal those of recomputing the whole clean prefix (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class BlockKVCache:
    """Per layer, per sequence: rotated keys and values [groups, cached tokens, head_dim]."""

    keys: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    values: dict[int, dict[int, Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheCall:
    """One decoder call's use of the cache: which cache row each batch row is, and how many of its
    leading span tokens (finished clean blocks) to append once they have been attended."""

    cache: BlockKVCache
    rows: tuple[int, ...]
    commit: tuple[int, ...]

    def extend(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cached keys and values before the span's, padded over the batch, and their validity.

        key, value: [b, groups, s, d] of the span. Returns keys and values [b, groups, P + s, d] and
        a [b, P] mask of the real cached entries; then appends the committed span tokens."""
        keys, values = self.cache.keys.setdefault(layer, {}), self.cache.values.setdefault(layer, {})
        b, groups, _, dim = key.shape
        past = [keys[r].shape[1] if r in keys else 0 for r in self.rows]
        width = max(past)
        past_k = key.new_zeros(b, groups, width, dim)
        past_v = value.new_zeros(b, groups, width, dim)
        for i, (r, n) in enumerate(zip(self.rows, past)):
            if n:
                past_k[i, :, :n], past_v[i, :, :n] = keys[r], values[r]
        valid = torch.arange(width, device=key.device)[None, :] < torch.tensor(past, device=key.device)[:, None]
        for i, (r, n, c) in enumerate(zip(self.rows, past, self.commit)):
            if c:
                keys[r] = torch.cat([past_k[i, :, :n], key[i, :, :c]], dim=1)
                values[r] = torch.cat([past_v[i, :, :n], value[i, :, :c]], dim=1)
        return torch.cat([past_k, key], dim=2), torch.cat([past_v, value], dim=2), valid
