"""The one attention-mask predicate and the per-token layout it reads.

Every attention backend (dense, Transformer Engine bias, flex block mask) derives its mask from
`may_attend`; nothing else in the code base decides which token sees which.

A micro-batch is described per token by its rotary position, whether it belongs to the noisy
(re-masked) half of a `[z~ ; y0]` sequence, its segment (sample) id (segment 0 is padding) and
its block origin: blocks are `block_size` positions counted from the origin (0: absolute blocks,
Fast-dLLM v2 and SDAR; the prompt length mod `block_size`: blocks that start at the prompt's end,
LLaDA and Dream, see `diffusion/spec.py`). A token may also see one other segment, its shared
prompt (`data.share_prompt`: a pair's samples in one row, the prompt once, `rows/shared_prompt.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

PAD_SEGMENT = 0


class MaskVariant(str, Enum):
    BLOCK_DIFFUSION = "block_diffusion"  # [z~ ; y0] one-pass layout (Fast-dLLM v2, SDAR)
    BIDIRECTIONAL = "bidirectional"  # full attention inside a sample (LLaDA, Dream)
    CAUSAL = "causal"  # autoregressive, for checks against causal LMs


def may_attend(
    variant: MaskVariant,
    block_size: int,
    q_pos: Tensor,
    q_noisy: Tensor,
    q_seg: Tensor,
    q_prompt: Tensor,
    k_pos: Tensor,
    k_noisy: Tensor,
    k_seg: Tensor,
) -> Tensor:
    """Whether query q may attend key k (broadcasting, element-wise ops only, so flex can vmap it).

    Positions are relative to the token's block origin. Block diffusion, with blk = position // block_size:
      noisy -> noisy: same block; noisy -> clean: earlier block; clean -> clean: same or earlier
      block; clean -> noisy: never.
    A query sees the keys of its own segment and of its prompt segment `q_prompt` (its shared
    prompt's segment, or its own segment where it has none), no other; padding sees only padding,
    so no row of the mask is empty.
    """
    if variant == MaskVariant.BIDIRECTIONAL:
        rule = torch.ones_like(q_seg == k_seg)
    elif variant == MaskVariant.CAUSAL:
        rule = k_pos <= q_pos
    else:
        q_blk, k_blk = q_pos // block_size, k_pos // block_size
        from_noisy = torch.where(k_noisy, q_blk == k_blk, k_blk < q_blk)
        from_clean = ~k_noisy & (k_blk <= q_blk)
        rule = torch.where(q_noisy, from_noisy, from_clean)
    return ((q_seg == k_seg) | (q_prompt == k_seg)) & (rule | (q_seg == PAD_SEGMENT))


@dataclass(eq=False)
class TokenLayout:
    """Attention metadata of one micro-batch; the model receives it as its `attention_mask`.

    positions [b, s] rotary positions; noisy [b, s] noisy-half flags; segments [b, s] sample ids
    (0 = padding); origins [b, s] each token's block origin (None: all 0); prompt_segments [b, s]
    the segment of each token's shared prompt, its own segment where it has none (None: all own),
    all over the whole row.
    Under context parallelism a rank holds only some of the row's tokens: `query_index` [s_q] names
    them (its queries, in its local order) and `key_index` [s_k] the order of the keys after the
    all-gather of K/V over the CP group; `None` means the whole row in order. Derived tensors (dense
    mask, flex block mask, rotary tables) are built once per micro-batch and shared by all layers.
    """

    positions: Tensor
    noisy: Tensor
    segments: Tensor
    variant: MaskVariant
    block_size: int
    kv_cache: object | None = None  # decoding: the call's use of a block KV cache (a models.kv_cache.CacheCall)
    query_index: Tensor | None = None  # context parallel: this rank's tokens of the row
    key_index: Tensor | None = None  # context parallel: the row's tokens in all-gathered order
    origins: Tensor | None = None  # per token: where its blocks start (positions mod block_size)
    prompt_segments: Tensor | None = None  # per token: the segment of its shared prompt (None: its own)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        shape = self.positions.shape
        origins = self.origins if self.origins is not None else self.positions
        prompts = self.prompt_segments if self.prompt_segments is not None else self.segments
        if (self.positions.dim() != 2 or self.noisy.shape != shape or self.segments.shape != shape
                or origins.shape != shape or prompts.shape != shape):
            raise ValueError(
                f"TokenLayout tensors must all be [batch, seq]; got positions {tuple(shape)}, "
                f"noisy {tuple(self.noisy.shape)}, segments {tuple(self.segments.shape)}, origins "
                f"{tuple(origins.shape)}, prompt_segments {tuple(prompts.shape)}"
            )
        if self.variant != MaskVariant.BLOCK_DIFFUSION and bool(self.noisy.any()):
            raise ValueError(f"variant {self.variant.value!r} has no noisy half")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    @property
    def seq_len(self) -> int:
        """Tokens of the whole row."""
        return self.positions.shape[1]

    @property
    def q_len(self) -> int:
        """Query tokens on this rank (the whole row without context parallelism)."""
        return self.seq_len if self.query_index is None else self.query_index.numel()

    def cached(self, key, build):
        """Memoize a derived tensor for the lifetime of this micro-batch."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _fields(self, index: Tensor | None, *extra: Tensor) -> tuple[Tensor, ...]:
        relative = self.positions if self.origins is None else self.positions - self.origins
        fields = (relative, self.noisy, self.segments, *extra)
        return fields if index is None else tuple(t[:, index] for t in fields)

    def queries(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The predicate's (positions from the block origin, noisy, segments, prompt segments) [b, s_q]
        of this rank's queries."""
        prompts = self.segments if self.prompt_segments is None else self.prompt_segments
        return self._fields(self.query_index, prompts)

    def keys(self) -> tuple[Tensor, Tensor, Tensor]:
        """The predicate's (positions from the block origin, noisy, segments) [b, s_k] of the keys, in
        the order attention sees them."""
        return self._fields(self.key_index)

    def query_positions(self) -> Tensor:
        """Rotary positions [b, s_q] of this rank's queries."""
        return self.positions if self.query_index is None else self.positions[:, self.query_index]

    def allowed(self) -> Tensor:
        """Dense boolean mask [b, 1, s_q, s_k], True where attention is allowed."""

        def build():
            (qp, qn, qs, qr), (kp, kn, ks) = self.queries(), self.keys()
            q = lambda t: t[:, None, :, None]  # noqa: E731
            k = lambda t: t[:, None, None, :]  # noqa: E731
            return may_attend(self.variant, self.block_size, q(qp), q(qn), q(qs), q(qr), k(kp), k(kn), k(ks))

        return self.cached("allowed", build)

    def shares_one_mask(self) -> bool:
        """True when every sample of the micro-batch has the same mask (TE can then use 11ss)."""
        return self.cached("shared", lambda: bool((self.allowed() == self.allowed()[:1]).all()))

    def to(self, device) -> "TokenLayout":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TokenLayout(
            self.positions.to(device), self.noisy.to(device), self.segments.to(device),
            self.variant, self.block_size, self.kv_cache, move(self.query_index), move(self.key_index),
            move(self.origins), move(self.prompt_segments),
        )


@dataclass
class PackedSample:
    """One sample laid out for the model: token ids and per-token layout fields, all [s]."""

    tokens: Tensor
    positions: Tensor
    noisy: Tensor
    origin: int = 0  # block origin of the sample


def noisy_start(prompt_len: int, block_size: int, origin: int = 0) -> int:
    """Start of the block holding the first response token: where a `[z~ ; y0]` noisy half begins."""
    return origin + (prompt_len - origin) // block_size * block_size


def block_diffusion_sample(noisy_tokens: Tensor, clean_tokens: Tensor, prompt_len: int, block_size: int,
                           origin: int = 0) -> PackedSample:
    """The `[z~ ; y0]` sequence of one sample.

    The noisy half starts at the block holding the first response token: blocks made only of
    prompt are never scored and their noisy copies could only be seen by themselves, so leaving
    them out changes no scored logit and saves up to P tokens (the method's `P + 2L`).
    Both halves keep absolute positions, so blocks sit where the decoder puts them.
    """
    n = clean_tokens.numel()
    if noisy_tokens.numel() != n:
        raise ValueError(f"noisy ({noisy_tokens.numel()}) and clean ({n}) lengths differ")
    if not 0 <= prompt_len < n:
        raise ValueError(f"prompt_len must be in [0, {n}), got {prompt_len}")
    start = noisy_start(prompt_len, block_size, origin)
    positions = torch.cat([torch.arange(start, n), torch.arange(n)])
    noisy = torch.cat([torch.ones(n - start, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    return PackedSample(torch.cat([noisy_tokens[start:], clean_tokens]), positions, noisy, origin)


def plain_sample(tokens: Tensor, origin: int = 0) -> PackedSample:
    """A single sequence without a noisy half (full-attention and causal rows, decoder inputs)."""
    n = tokens.numel()
    return PackedSample(tokens, torch.arange(n), torch.zeros(n, dtype=torch.bool), origin)


def collate(samples: list[PackedSample], variant: MaskVariant, block_size: int, pad_id: int,
            pad_to_multiple: int = 1) -> tuple[Tensor, TokenLayout]:
    """Right-pad samples to a common length; each sample is its own segment (1..b)."""
    length = max(s.tokens.numel() for s in samples)
    length = -(-length // pad_to_multiple) * pad_to_multiple
    b = len(samples)
    tokens = torch.full((b, length), pad_id, dtype=torch.long)
    positions = torch.zeros((b, length), dtype=torch.long)
    noisy = torch.zeros((b, length), dtype=torch.bool)
    segments = torch.zeros((b, length), dtype=torch.long)
    origins = torch.zeros((b, length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = s.tokens.numel()
        tokens[i, :n], positions[i, :n], noisy[i, :n], segments[i, :n], origins[i, :n] = (
            s.tokens, s.positions, s.noisy, i + 1, s.origin)
    return tokens, TokenLayout(positions, noisy, segments, variant, block_size, origins=origins)
