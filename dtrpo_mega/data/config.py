"""The training side's data settings: where the preprocessed dataset is, and how it must match the run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtrpo_mega.data.checks import check_vocabulary
from dtrpo_mega.data.indexed import PreferenceDataset
from dtrpo_mega.diffusion.spec import LastBlock

if TYPE_CHECKING:
    from dtrpo_mega.models.config import DLLMConfig


@dataclass
class DataConfig:
    path: str = ""  # prefix written by `dtrpo preprocess`
    pad_to_multiple: int = 8  # the trainer pads sequence lengths to a multiple of this
    packing: bool = False  # pack whole pairs into rows of train.micro_batch_tokens tokens
    fingerprint: str | None = None  # when set, the dataset at `path` must have exactly this fingerprint
    ref_confidence: str | None = None  # tools/precompute_reference.py confidence, for scheduler.order=ref_confidence
    last_block: str = "family"  # family | cut | mask | fill: a response without logged steps that ends inside a block
    share_prompt: bool | None = None  # a pair's samples in one row, its prompt once (None: wherever rows are one-pass)

    def __post_init__(self):
        if self.last_block != "family" and self.last_block not in [b.value for b in LastBlock]:
            raise ValueError(f"data.last_block={self.last_block!r}; choose from "
                             f"{['family', *(b.value for b in LastBlock)]}")
        if type(self.pad_to_multiple) is not int or self.pad_to_multiple < 1:
            raise ValueError(f"data.pad_to_multiple must be a positive integer, got {self.pad_to_multiple!r}")
        if self.fingerprint is not None and not re.fullmatch(r"[0-9a-f]{64}", str(self.fingerprint)):
            raise ValueError("data.fingerprint must be a sha256 hex digest (64 lowercase hex digits), got "
                             f"{self.fingerprint!r}")

    def last_block_rule(self, family_default: LastBlock) -> LastBlock:
        return family_default if self.last_block == "family" else LastBlock(self.last_block)

    def open(self, model: DLLMConfig | None = None) -> PreferenceDataset:
        """Open the dataset at `path`; given the model, check it was made for that family and vocabulary."""
        if not self.path:
            raise ValueError("data.path is required (a prefix written by `dtrpo preprocess`)")
        dataset = PreferenceDataset.open(self.path)
        if self.fingerprint is not None and dataset.fingerprint != self.fingerprint:
            raise ValueError(f"data.fingerprint={self.fingerprint} but the dataset at {self.path} has fingerprint "
                             f"{dataset.fingerprint}: its data, tokenizer or preprocessing settings differ")
        if model is not None:
            family = dataset.metadata["settings"]["family"]
            if model.family != family:
                raise ValueError(f"model.family={model.family!r} but the data at {self.path} was rendered for "
                                 f"{family!r}; preprocess it with --family {model.family}")
            check_vocabulary(dataset, model.vocab_size, model.mask_token_id)
        return dataset
