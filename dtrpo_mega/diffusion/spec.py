"""The diffusion traits of a model, all that trajectories, scoring and decoding need to know.

A model config (`models/config.py`) provides one through `DLLMConfig.diffusion`; nothing in
`diffusion/` reads the model's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dtrpo_mega.diffusion.mask import MaskVariant


class BlockAlignment(str, Enum):
    ABSOLUTE = "absolute"  # blocks at multiples of block_size from position 0 (Fast-dLLM v2, SDAR)
    PROMPT_END = "prompt_end"  # the first block starts at the prompt's end (LLaDA's and Dream's generate)


class ScoringLayout(str, Enum):
    ONE_PASS = "one_pass"  # one `[z~ ; y0]` row per sequence state: every block sees earlier blocks clean
    PER_BLOCK = "per_block"  # full attention: one row per scored block, earlier blocks clean, later ones [M]


class LastBlock(str, Enum):
    """Data without logged trajectories: how a response that ends inside a block is scored."""

    CUT = "cut"  # the row ends with the response
    MASK = "mask"  # the rest of its last block stays [M] in every state and is not scored
    FILL = "fill"  # the rest of its last block holds the family's fill token, revealed and scored like any token


@dataclass(frozen=True)
class DiffusionSpec:
    block_size: int
    sub_block_size: int
    mask_token_id: int
    logits_shift: bool  # token j is read from the logit at j - 1
    attention: MaskVariant
    block_alignment: BlockAlignment = BlockAlignment.ABSOLUTE

    def origin(self, prompt_len):
        """Where blocks start, modulo block_size, for a prompt of this many tokens (ints or arrays)."""
        return 0 if self.block_alignment == BlockAlignment.ABSOLUTE else prompt_len % self.block_size

    def to_block_end(self, prompt_len, length):
        """Slots from the end of a sequence of `length` tokens to the end of its last block (ints or arrays)."""
        return -(length - self.origin(prompt_len)) % self.block_size

    def starts_block(self, position: int, prompt_len: int) -> bool:
        return (position - self.origin(prompt_len)) % self.block_size == 0


class FirstTokenRule(str, Enum):
    """Which logit scores a block's first token in a shifted-logits family (one-pass rows)."""

    DECODER = "decoder"  # the clean previous block's last logit: what the block decoder does
    NOISY = "noisy"  # the noisy copy's previous logit: Fast-dLLM v2's training loss


class SFTNormalizer(str, Enum):
    SEQUENCE_LENGTH = "sequence_length"  # each sequence's sum over its response length, then the mean over sequences
    RESPONSE_TOKENS = "response_tokens"  # the batch's sum over the batch's response tokens
    MASKED_TOKENS = "masked_tokens"  # the batch's sum over the batch's masked tokens


@dataclass(frozen=True)
class SFTConvention:
    """How a family's own code trains it with masked diffusion (`objective.name=sft`)."""

    inverse_t: bool  # weight every masked token 1/t
    one_t: bool  # one t for the whole response (else one per block)
    complementary: bool  # a second row with the complementary mask, so every response token is scored once
    normalizer: SFTNormalizer
    first_token: FirstTokenRule = FirstTokenRule.DECODER

    def __post_init__(self):
        if self.complementary and self.inverse_t:
            raise ValueError("an SFT convention with complementary masks weights every token 1 (inverse_t=False)")
