"""Checks on descriptor rows as retrieval streams them: norms away from 1 and exact duplicate rows.

Both cost a pass over rows already in memory: a row norm (``einsum``) and a 64-bit hash per row. The
hash multiplies the row's float32 bit patterns by fixed random odd 32-bit weights per column (wrapping,
so it depends on each value's position) and folds the products two ways, their sum and their XOR;
integer arithmetic, so equal rows always hash equal. Two different rows share a hash with negligible
odds, so the duplicate count is exact in practice without comparing rows. (Products in uint64 were
10x slower: ``benchmarks/bench_row_checks.py``.)
"""

from __future__ import annotations

import numpy as np

# A stored row counts as "not normalized" when its L2 norm is off 1 by more than this (float16 shards
# of unit rows stay within ~1e-3).
NORM_TOLERANCE = 1e-2
_HASH_SEED = 0x5EED


class RowNorms:
    """Counts rows whose L2 norm differs from 1 beyond :data:`NORM_TOLERANCE`."""

    def __init__(self) -> None:
        self.rows = 0
        self.off = 0
        self.lo = np.inf
        self.hi = -np.inf

    def add(self, rows: np.ndarray) -> None:
        a = np.asarray(rows, dtype=np.float32)
        if a.size == 0:
            return
        norms = np.sqrt(np.einsum("ij,ij->i", a, a)).astype(np.float64)  # float32 is ample for 1e-2
        self.rows += a.shape[0]
        self.off += int(np.count_nonzero(np.abs(norms - 1.0) > NORM_TOLERANCE))
        self.lo, self.hi = min(self.lo, float(norms.min())), max(self.hi, float(norms.max()))

    def describe(self, what: str) -> str | None:
        """A phrase for the warning, or None when every row is of unit norm."""
        if not self.off:
            return None
        return f"{self.off} of {self.rows} {what} rows (norms {self.lo:.3g} to {self.hi:.3g})"


class RowHashes:
    """64-bit hashes of rows, to count exact (bit-identical) duplicates at the end."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._weights: tuple[np.ndarray, np.ndarray] | None = None
        self._buf = np.empty(0, np.uint32)  # reused product buffer: a fresh one per chunk costs page faults

    def add(self, rows: np.ndarray) -> None:
        a = np.ascontiguousarray(rows, dtype=np.float32)
        if a.size == 0:
            return
        a = a.reshape(a.shape[0], -1)
        if self._weights is None:
            rng = np.random.default_rng(_HASH_SEED)
            self._weights = tuple(  # type: ignore[assignment]
                rng.integers(0, 2**31, a.shape[1], dtype=np.uint32) * np.uint32(2) + np.uint32(1)
                for _ in range(2)
            )
        assert self._weights is not None
        bits = a.view(np.uint32)
        if self._buf.size < bits.size:
            self._buf = np.empty(bits.size, np.uint32)
        prod = self._buf[: bits.size].reshape(bits.shape)
        np.multiply(bits, self._weights[0], out=prod)  # wraps modulo 2**32
        total = prod.sum(axis=1, dtype=np.uint64)  # < d * 2**32: no wrap
        np.multiply(bits, self._weights[1], out=prod)
        folded = np.bitwise_xor.reduce(prod, axis=1).astype(np.uint64)
        with np.errstate(over="ignore"):
            self._parts.append(total * np.uint64(0x9E3779B97F4A7C15) ^ folded)

    def duplicates(self) -> tuple[int, int]:
        """(rows equal to an earlier row, groups of equal rows with more than one member)."""
        if not self._parts:
            return 0, 0
        _, counts = np.unique(np.concatenate(self._parts), return_counts=True)
        many = counts[counts > 1]
        return int((many - 1).sum()), int(many.size)
