"""Checks that a preprocessed dataset fits the model that trains on it."""

from __future__ import annotations

import numpy as np

from dtrpo_mega.data.indexed import PreferenceDataset

SCAN_CHUNK = 1 << 24  # tokens per read while scanning the memory-mapped token file


def check_vocabulary(dataset: PreferenceDataset, vocab_size: int, mask_token_id: int) -> None:
    """Raise, naming the setting, if the data cannot feed a model with this vocabulary and mask token.

    The tokenizer's vocabulary must fit in the model's, every token id must be below
    `vocab_size`, and no token may be the mask token (the trainer would read it as masked).
    """
    tokenizer = dataset.metadata["tokenizer"]
    if tokenizer["vocab_size"] > vocab_size:
        raise ValueError(f"model.vocab_size={vocab_size} is smaller than the vocabulary of the tokenizer the data at "
                         f"{dataset.prefix} was made with ({tokenizer['vocab_size']} tokens, {tokenizer['path']}): "
                         "preprocess the data with this model's tokenizer")
    tokens = dataset.tokens
    for start in range(0, len(tokens), SCAN_CHUNK):
        chunk = np.asarray(tokens[start : start + SCAN_CHUNK])
        bad = np.flatnonzero((chunk < 0) | (chunk >= vocab_size) | (chunk == mask_token_id))
        if bad.size:
            position = start + int(bad[0])
            token = int(tokens[position])
            pair = int(np.searchsorted(dataset.bounds[:, 0], position, side="right")) - 1
            if token == mask_token_id:
                raise ValueError(f"data.path={dataset.prefix}: pair {pair} contains token id {token}, the mask token "
                                 f"(model.mask_token_id={mask_token_id}): the data and the model disagree on the mask "
                                 "token")
            raise ValueError(f"data.path={dataset.prefix}: pair {pair} has token id {token}, outside "
                             f"model.vocab_size={vocab_size}")
