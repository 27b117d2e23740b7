"""One region's vectors of one model, in memory: what makes memsearch one matrix-vector product.

Rows of a float32 matrix that grows by doubling, a key for each row, and removal by moving the
last row into the hole, so puts and removes are O(1) and a search is a BLAS product plus a
partial sort. The memory store keeps these in step with SQLite (kernel/memstore.py).
"""

from __future__ import annotations

import numpy as np


class RegionVectors:
    """One region's vectors of one model as rows of a float32 matrix, with the key of each row."""

    def __init__(self, dim: int):
        self.dim = dim
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.matrix = np.empty((0, dim), dtype=np.float32)   # capacity >= len(keys); rows past it unused

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes

    def put(self, key: str, vector: np.ndarray) -> None:
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == len(self.matrix):
                grown = np.empty((max(16, 2 * row), self.dim), dtype=np.float32)
                grown[:row] = self.matrix[:row]
                self.matrix = grown
            self.keys.append(key)
            self.rows[key] = row
        self.matrix[row] = vector

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = len(self.keys) - 1
        if row != last:    # move the last row into the hole
            moved = self.keys[last]
            self.matrix[row] = self.matrix[last]
            self.keys[row] = moved
            self.rows[moved] = row
        self.keys.pop()

    def search(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        n = len(self.keys)
        if n == 0:
            return []
        scores = self.matrix[:n] @ query
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.keys[i], float(scores[i])) for i in top]
