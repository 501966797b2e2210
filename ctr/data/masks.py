"""Who interacted with what: a (U, I) boolean matrix stored one bit per cell.

A dense (U, I) bool array costs a byte per cell: 1.6 MB for MovieLens-100K
(943 x 1,682) but 3.7 GB for MovieLens-20M (138,493 x 26,744), and the
protocol keeps two (training and all interactions). InteractionMask holds the
same matrix in an eighth of that (463 MB for ML-20M) and answers the three
questions the samplers ask, vectorised:

    mask = InteractionMask.from_pairs(user_rows, item_rows, (U, I))
    mask[users, items]      # (N,) bool: is each (user, item) pair set?
    mask[rows]              # (len(rows), I) dense bool rows (rows: int array or slice)
    mask.row_counts()       # (U,) int64: set cells per row

`np.asarray(mask)` gives the dense array; the samplers accept either form
(`row_counts` and `dense_rows` below dispatch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)  # bits per byte
_ROW_BLOCK_BYTES = 1 << 26  # unpack at most ~64 MB of dense rows at a time


class InteractionMask:
    """(U, I) bool matrix, bit-packed along the items (np.packbits, big-endian bits).

    Args:
        bits: (U, ceil(I / 8)) uint8, as np.packbits(dense, axis=1) returns.
        num_items: I (the last byte of a row may hold padding bits).
    """

    ndim = 2
    dtype = np.dtype(bool)

    def __init__(self, bits: np.ndarray, num_items: int) -> None:
        bits = np.asarray(bits)
        width = -(-int(num_items) // 8)
        if bits.dtype != np.uint8 or bits.ndim != 2 or bits.shape[1] != width:
            raise ValueError(
                f"expected bits as uint8 of shape (U, {width}) for {num_items} items, got "
                f"{bits.dtype} of shape {bits.shape}"
            )
        self.bits = bits
        self.shape = (bits.shape[0], int(num_items))

    @classmethod
    def from_pairs(
        cls, user_rows: np.ndarray, item_rows: np.ndarray, shape: tuple[int, int]
    ) -> InteractionMask:
        """The mask with the cells (user_rows[k], item_rows[k]) set (repeats are fine)."""
        num_users, num_items = shape
        bits = np.zeros((num_users, -(-num_items // 8)), dtype=np.uint8)
        users = np.asarray(user_rows, dtype=np.int64)
        items = np.asarray(item_rows, dtype=np.int64)
        values = np.left_shift(1, 7 - (items & 7)).astype(np.uint8)
        np.bitwise_or.at(bits, (users, items >> 3), values)
        return cls(bits, num_items)

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> InteractionMask:
        dense = np.asarray(dense, dtype=bool)
        return cls(np.packbits(dense, axis=1), dense.shape[1])

    # ----------------------------------------------------------------- queries
    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(N,) bool: whether each (users[k], items[k]) cell is set."""
        items = np.asarray(items)
        byte = self.bits[users, items >> 3]
        return ((byte >> (7 - (items & 7)).astype(np.uint8)) & 1).astype(bool)

    def rows(self, rows: Any) -> np.ndarray:
        """Dense (len(rows), I) bool rows (rows: an int array or a slice)."""
        return np.unpackbits(self.bits[rows], axis=-1, count=self.shape[1]).astype(bool)

    def row_counts(self) -> np.ndarray:
        """(U,) int64: set cells per row."""
        out = np.empty(self.shape[0], dtype=np.int64)
        step = max(1, _ROW_BLOCK_BYTES // max(1, self.bits.shape[1] * 8))
        for start in range(0, self.shape[0], step):  # blocks bound the (rows, bytes) temp
            out[start : start + step] = _POPCOUNT[self.bits[start : start + step]].sum(axis=1)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and len(key) == 2:
            return self.contains(np.asarray(key[0]), np.asarray(key[1]))
        return self.rows(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        dense = self.rows(slice(None))
        return dense if dtype is None else dense.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def __repr__(self) -> str:
        return f"InteractionMask(shape={self.shape}, {self.nbytes:,} bytes)"


def row_counts(mask: np.ndarray | InteractionMask, rows: np.ndarray | None = None) -> np.ndarray:
    """(R,) set cells of each of `rows` (default: every row) of a dense or packed mask."""
    if isinstance(mask, InteractionMask):
        counts = mask.row_counts()
        return counts if rows is None else counts[rows]
    mask = np.asarray(mask)
    return (mask if rows is None else mask[rows]).sum(axis=1)


def dense_rows(mask: np.ndarray | InteractionMask, rows: Any) -> np.ndarray:
    """Dense bool rows of a dense or packed mask (rows: an int array or a slice)."""
    return mask.rows(rows) if isinstance(mask, InteractionMask) else np.asarray(mask)[rows]


def row_block(num_items: int, budget_bytes: int = _ROW_BLOCK_BYTES) -> int:
    """How many dense rows of `num_items` float64 cells fit in `budget_bytes` (>= 1)."""
    return max(1, budget_bytes // (8 * max(1, num_items)))
