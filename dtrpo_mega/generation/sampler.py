"""Decoders of the method doc (section 5): block diffusion and semi-autoregressive remasking.

One engine serves both. A response is decoded block by block (blocks of `block_size` from the
family's origin, `DiffusionSpec.origin`: the blocks the scorer uses); inside a block, sub-block by
sub-block; each step forwards the model,
takes the confidence of every masked position of the current sub-block and reveals
- with `tokens_per_step`: that many, most confident first (SDAR, LLaDA);
- otherwise: every position above `threshold`, and always the most confident one (Fast-dLLM v2).
With shifted logits (Fast-dLLM v2, Dream) token j is read from the logit at j-1, and a block's
first token is its own, autoregressive step (read from the clean previous block).

What a step forwards depends on the attention:
- block diffusion: the clean finished blocks plus the current block, block-causal. With
  `kv_cache` (default) the finished blocks' keys and values are cached (models/kv_cache.py) and a
  call forwards only the span after its row's cache: the blocks finished since the last call
  (appended to the cache) and the current block. Without it, the clean prefix is recomputed;
- bidirectional (LLaDA, Dream): the whole sequence, later blocks still [M] (no exact cache: the
  earlier blocks see the later ones).
Decoding stops after the block that holds end-of-turn (`stop_at_end_of_turn`, block-diffusion
families: later blocks cannot change it) or runs to `max_new_tokens` (LLaDA's and Dream's own
decoders: the slots after end-of-turn are decoded too). Every revealed token records its step (a
per-sequence counter), ready for `logged_steps`; the decoded slots after end-of-turn are kept as
the generation's tail, since they are part of the trajectory the scorer replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dtrpo_mega.diffusion.mask import MaskVariant, PackedSample, TokenLayout, collate, noisy_start, plain_sample
from dtrpo_mega.diffusion.spec import DiffusionSpec
from dtrpo_mega.diffusion.trajectory import response_blocks
from dtrpo_mega.models.kv_cache import BlockKVCache, CacheCall

Forward = Callable[[Tensor, TokenLayout], Tensor]  # (input_ids [b, s], layout) -> logits [b, s, v]


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 256
    threshold: float = 0.9  # reveal every masked position whose confidence exceeds it (1.0: one per step)
    tokens_per_step: int | None = None  # fixed reveals per step instead of the threshold
    temperature: float = 0.0  # 0: greedy; > 0: sample, confidence = the sample's probability
    end_of_turn_id: int | None = None  # where the answer ends
    stop_at_end_of_turn: bool = True  # stop once a finished block holds end-of-turn (else decode every slot)
    kv_cache: bool = True  # block diffusion: cache finished blocks' keys and values

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.tokens_per_step is not None and self.tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be >= 1, got {self.tokens_per_step}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Generation:
    """One response: ids up to and including the end-of-turn token, the decoded slots after it,
    and the reveal step of each (tokens, then tail)."""

    tokens: list[int]
    reveal_steps: list[int]  # len(tokens) + len(tail) values
    ended: bool  # True when the answer ends with end-of-turn, False at max_new_tokens
    forward_passes: int  # decoder calls this sequence took part in
    # decoded after end-of-turn: the rest of its block, or of max_new_tokens
    tail: list[int] = field(default_factory=list)


@dataclass
class DecodeStats:
    """Parallel-decoding efficiency; tokens after an end-of-turn are discarded and not counted."""

    new_tokens: int
    forward_passes: int  # summed over sequences
    batch_calls: int  # model calls (each serves the whole batch)
    seconds: float

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / max(self.forward_passes, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


@dataclass
class _Row:
    """Decoding state of one sequence: prompt + response slots ([M] until revealed)."""

    index: int  # row of the batch (and of the KV cache)
    seq: Tensor
    prompt_len: int
    blocks: list[range]
    steps: Tensor  # per slot: reveal step, -1 while masked (prompt slots: -1)
    cached: int = 0  # leading slots whose keys and values are in the KV cache
    block: int = 0
    passes: int = 0
    done: bool = False
    ended: bool = False

    @property
    def current(self) -> range:
        return self.blocks[self.block]


class Sampler:
    """Decodes batches of prompts with one model; `model(input_ids, layout) -> logits [b, s, >= vocab_size]`."""

    def __init__(self, model: Forward, spec: DiffusionSpec, vocab_size: int, decode: DecodeConfig,
                 device: torch.device | str = "cpu"):
        self.model, self.cfg, self.vocab_size, self.decode, self.device = (model, spec, vocab_size, decode,
                                                                           torch.device(device))

    def generate(self, prompts: list[list[int]],
                 generator: torch.Generator | None = None) -> tuple[list[Generation], DecodeStats]:
        """Decode every prompt (token ids, any lengths); one model call per step serves the batch."""
        if self.cfg.logits_shift and any(len(p) < 1 for p in prompts):
            raise ValueError("a shifted-logits family needs at least one prompt token")
        rows = [self._start(i, p) for i, p in enumerate(prompts)]
        cache = BlockKVCache() if self.decode.kv_cache and self.cfg.attention == MaskVariant.BLOCK_DIFFUSION else None
        start, calls = time.perf_counter(), 0
        with torch.no_grad():
            while active := [r for r in rows if not r.done]:
                offsets = [r.cached for r in active]
                logits = self._forward(active, cache)
                calls += 1
                for i, row in enumerate(active):
                    self._step(row, logits[i, : row.current.stop - offsets[i]], offsets[i], generator)
        out = [self._finish(r) for r in rows]
        stats = DecodeStats(sum(len(g.tokens) for g in out), sum(g.forward_passes for g in out), calls,
                            time.perf_counter() - start)
        return out, stats

    def _start(self, index: int, prompt: list[int]) -> _Row:
        p, n = len(prompt), len(prompt) + self.decode.max_new_tokens
        seq = torch.full((n,), self.cfg.mask_token_id, dtype=torch.long)
        seq[:p] = torch.as_tensor(prompt, dtype=torch.long)
        blocks = response_blocks(p, n, self.cfg.block_size, self.cfg.origin(p))
        return _Row(index, seq, p, blocks, torch.full((n,), -1, dtype=torch.long))

    def _decoder_input(self, row: _Row) -> PackedSample:
        """Block diffusion: clean finished blocks (from the cache on) + current block; else everything."""
        origin = self.cfg.origin(row.prompt_len)
        if self.cfg.attention != MaskVariant.BLOCK_DIFFUSION:
            return plain_sample(row.seq, origin)
        span = row.seq[row.cached : row.current.stop]
        return PackedSample(span, torch.arange(row.cached, row.current.stop),
                            torch.zeros(span.numel(), dtype=torch.bool), origin)

    def _forward(self, rows: list[_Row], cache: BlockKVCache | None) -> Tensor:
        """Logits [b, s, v] of each row's decoder input (row i's slot `row.cached + j` at j)."""
        tokens, layout = collate([self._decoder_input(r) for r in rows], self.cfg.attention, self.cfg.block_size,
                                 pad_id=0)
        if cache is not None:
            # the finished blocks before the current one go into the cache once this call has used them
            done = [noisy_start(r.current.start, self.cfg.block_size, self.cfg.origin(r.prompt_len)) for r in rows]
            layout.kv_cache = CacheCall(cache, tuple(r.index for r in rows),
                                        tuple(d - r.cached for d, r in zip(done, rows)))
            for row, d in zip(rows, done):
                row.cached = d
        return self.model(tokens.to(self.device), layout.to(self.device)).float().cpu()

    def _candidates(self, row: _Row) -> tuple[list[int], bool]:
        """Masked positions this step may reveal, and whether it is a forced single reveal."""
        block, origin = row.current, self.cfg.origin(row.prompt_len)
        first = block.start
        if self.cfg.logits_shift and self.cfg.starts_block(first, row.prompt_len) and row.steps[first] < 0:
            return [first], True  # a block's first token: its own autoregressive step
        masked = [p for p in block if row.steps[p] < 0]
        sub = (masked[0] - origin) // self.cfg.sub_block_size
        return [p for p in masked if (p - origin) // self.cfg.sub_block_size == sub], False

    def _step(self, row: _Row, logits: Tensor, offset: int, generator: torch.Generator | None) -> None:
        """One step of a row; `logits[j]` belongs to slot `offset + j`."""
        positions, forced = self._candidates(row)
        idx = torch.tensor(positions) - int(self.cfg.logits_shift) - offset
        scores = logits[idx, : self.vocab_size].clone()
        scores[:, self.cfg.mask_token_id] = float("-inf")  # never reveal [M]
        tokens, confidence = self._pick(scores, generator)
        chosen = self._choose(confidence, forced)
        for k in chosen.tolist():
            row.seq[positions[k]] = tokens[k]
            row.steps[positions[k]] = row.passes
        row.passes += 1
        if all(row.steps[p] >= 0 for p in row.current):
            self._close_block(row)

    def _pick(self, scores: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Token and confidence per candidate: argmax and its probability, or a tempered sample."""
        t = self.decode.temperature
        probs = torch.softmax(scores / (t if t > 0 else 1.0), dim=-1)
        if t > 0:
            tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            tokens = probs.argmax(-1)
        return tokens, probs.gather(-1, tokens[:, None])[:, 0]

    def _choose(self, confidence: Tensor, forced: bool) -> Tensor:
        """Indices (into the candidates) revealed this step."""
        order = torch.argsort(confidence, descending=True, stable=True)
        if forced:
            return order[:1]
        if self.decode.tokens_per_step is not None:
            return order[: self.decode.tokens_per_step]
        above = order[confidence[order] > self.decode.threshold]
        return above if above.numel() else order[:1]

    def _close_block(self, row: _Row) -> None:
        eot = self.decode.end_of_turn_id
        row.ended = row.ended or (eot is not None
                                  and bool((row.seq[row.current.start : row.current.stop] == eot).any()))
        if (row.ended and self.decode.stop_at_end_of_turn) or row.block + 1 == len(row.blocks):
            row.done = True
        else:
            row.block += 1

    def _finish(self, row: _Row) -> Generation:
        response = row.seq[row.prompt_len : row.current.stop].tolist()
        steps = row.steps[row.prompt_len : row.current.stop].tolist()
        cut = response.index(self.decode.end_of_turn_id) + 1 if row.ended else len(response)
        return Generation(response[:cut], steps, row.ended, row.passes, tail=response[cut:])
