"""Packing whole pairs into rows of a fixed token budget.

First-fit decreasing: pairs sorted by length (longest first, ties by position) go into the first
row with room. Deterministic in the pairs' lengths and order, so every pipeline stage, tensor- and
context-parallel peer and the reference pass pack the same way.
"""

from __future__ import annotations


class ItemTooLong(ValueError):
    def __init__(self, item: int, length: int, capacity: int):
        super().__init__(f"item {item} needs {length} tokens, more than the row budget of {capacity}")
        self.item, self.length = item, length


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Groups of item positions whose lengths sum to at most `capacity`, each group in input order."""
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ItemTooLong(i, n, capacity)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            rows.append([])
            free.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= lengths[i]
    return [sorted(row) for row in rows]
