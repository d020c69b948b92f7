"""Context parallelism: every row's tokens split over the CP ranks, attention over all of them.

Each CP rank holds the tokens of megatron's zigzag split (the row cut into 2N chunks; rank r
holds chunks r and 2N-1-r), so that the [z~ ; y0] mask, whose later blocks see more keys in both
halves, costs about the same on every rank. A rank computes q/k/v and rope for its own tokens,
all-gathers K and V over the CP group (`gather_sequence`) and attends its queries to every key
through the same mask predicate, read from the layout's `query_index` / `key_index`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import Tensor

from dtrpo_mega.diffusion.mask import TokenLayout


def _check(seq_len: int, cp_size: int, cp_rank: int) -> None:
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"CP rank {cp_rank} is outside parallel.context_parallel_size={cp_size}")
    if seq_len % (2 * cp_size):
        raise ValueError(
            f"row length {seq_len} is not a multiple of 2 x parallel.context_parallel_size = {2 * cp_size}; "
            "pad rows to that multiple (collate's pad_to_multiple)"
        )


def zigzag_index(seq_len: int, cp_size: int, cp_rank: int) -> Tensor:
    """The row positions held by `cp_rank`: chunks r and 2N-1-r of 2N equal chunks, in that order."""
    _check(seq_len, cp_size, cp_rank)
    chunk = seq_len // (2 * cp_size)
    first, second = cp_rank * chunk, (2 * cp_size - 1 - cp_rank) * chunk
    return torch.cat([torch.arange(first, first + chunk), torch.arange(second, second + chunk)])


def gathered_index(seq_len: int, cp_size: int) -> Tensor:
    """The row positions in the order of an all-gather over the CP group (rank 0's tokens first)."""
    return torch.cat([zigzag_index(seq_len, cp_size, r) for r in range(cp_size)])


def shard_layout(layout: TokenLayout, cp_rank: int, cp_size: int) -> TokenLayout:
    """This CP rank's view of the layout: its queries and the all-gathered keys (unchanged at CP=1)."""
    if cp_size == 1:
        return layout
    if layout.query_index is not None:
        raise ValueError("the layout is already split for context parallelism")
    if layout.kv_cache is not None:
        raise ValueError("decoding with a KV cache runs with parallel.context_parallel_size=1")
    device = layout.positions.device
    return dataclasses.replace(
        layout,
        query_index=zigzag_index(layout.seq_len, cp_size, cp_rank).to(device),
        key_index=gathered_index(layout.seq_len, cp_size).to(device),
        _cache={},
    )


def shard_tokens(t: Tensor, cp_rank: int, cp_size: int) -> Tensor:
    """This CP rank's columns of a [b, s] tensor (tokens, labels, weights), in its query order."""
    if cp_size == 1:
        return t
    return t[:, zigzag_index(t.shape[1], cp_size, cp_rank).to(t.device)]


def pair_balance(layout: TokenLayout, cp_size: int) -> Tensor:
    """Allowed (query, key) pairs of each CP rank over their mean, [cp_size]; 1.0 is perfect balance."""
    per_query = layout.allowed().sum(dim=(0, 1, 3)).double()  # [s]
    pairs = torch.stack([per_query[zigzag_index(layout.seq_len, cp_size, r)].sum() for r in range(cp_size)])
    return pairs / pairs.mean()


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0; backward: each rank keeps the sum over ranks of its slice's grads."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        size = dist.get_world_size(group)
        out = x.new_empty((size * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        group, size = ctx.group, dist.get_world_size(ctx.group)
        if dist.get_backend(group) == "gloo":  # gloo has no reduce_scatter
            total = grad.clone(memory_format=torch.contiguous_format)  # autograd may share `grad`
            dist.all_reduce(total, group=group)
            return total.chunk(size)[dist.get_rank(group)].clone(), None
        out = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad.contiguous(), group=group)
        return out, None


class _SumKeepGrad(torch.autograd.Function):
    """Sum over the group forward; identity backward (each rank's partial sum enters the total once)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def gather_sequence(x: Tensor, group) -> Tensor:
    """[s_local, ...] on every rank of `group` -> [size * s_local, ...] in rank order, autograd-aware."""
    return _GatherSequence.apply(x, group)


def all_reduce_sum_keep_grad(x: Tensor, group) -> Tensor:
    """The sum of `x` over `group` (e.g. per-sequence log-prob partial sums over CP ranks).

    The backward pass is the identity: the gradient of a loss computed identically on every rank
    from the total flows back to this rank's own partial sum only.
    """
    return _SumKeepGrad.apply(x, group)
