"""Reference confidences of every response token, for `scheduler.order=ref_confidence`.

Written once by `tools/precompute_reference.py confidence`; frozen data, not a function of theta.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtrpo_mega.data.keyed import load_keyed


class ConfidenceTable:
    def __init__(self, path: str | Path, expected_key: dict):
        tensors = load_keyed(path, expected_key, "data.ref_confidence")
        self.values, self.offsets = tensors["confidence"].numpy(), tensors["offsets"].numpy()

    def of(self, index: int, role: int, prompt_len: int) -> np.ndarray:
        """Per position of the sequence (prompt positions: 0, unused)."""
        start, stop = self.offsets[2 * index + role], self.offsets[2 * index + role + 1]
        return np.concatenate([np.zeros(prompt_len), self.values[start:stop]])
