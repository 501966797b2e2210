"""Behaviour history: each rating's most recent earlier items of its user, as index arrays.

The rules (DESIGN.md, "Behaviour history"): a rating sees the items its user
rated before it, in the (timestamp, item id) order of the split, never itself
or anything after it. With the leave-one-out split that is one rule for every
row: a training positive at position t of its user's sequence sees positions
< t (all training ratings), the validation rating sees the whole training
sequence, and the test rating sees the training sequence plus the validation
item. A training negative carries its positive's history; every candidate of
an evaluation user carries that user's held-out rating's history.

    codes = item_codes[enc.item_rows]                      # (R,) encoded movie ids
    history = history_matrix(enc.user_rows, codes, 50)     # (R, 50), left-padded
    windows = HistoryWindows.build(enc.user_rows, codes, 50)  # the same rows, 5 bytes each
    later = strictly_later(enc.user_rows, timestamps)       # (R,) bool

Everything is vectorised over the R ratings, no per-row or per-user Python.
The (R, L) matrix costs 8 L bytes per rating (3.2 GB for MovieLens-20M at
L = 20); HistoryWindows keeps the sequence it is cut from (an int32 code and a
uint8 or int16 depth per rating) and cuts a batch's rows when asked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _user_starts(user_rows: np.ndarray) -> np.ndarray:
    """(R,) index of the first rating of each rating's user; ratings must be grouped by user."""
    user_rows = np.asarray(user_rows)
    n = user_rows.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new_user = np.r_[True, user_rows[1:] != user_rows[:-1]]
    if np.unique(user_rows).size != int(new_user.sum()):
        raise ValueError(
            "expected the ratings grouped by user (each user's ratings contiguous, in time "
            "order, as leave_one_out_split sorts them); got a user whose ratings are split "
            "into several runs"
        )
    return np.maximum.accumulate(np.where(new_user, np.arange(n), 0))


def history_matrix(user_rows: np.ndarray, item_codes: np.ndarray, length: int) -> np.ndarray:
    """(R, length) int64: each rating's `length` most recent earlier item codes of its user.

    Args:
        user_rows: (R,) user of each rating; ratings grouped by user, in time order.
        item_codes: (R,) the value to record for each rating (the encoded movie id;
            0 is padding, so an item unknown to the encoder is left out).
        length: L, the most recent items kept.

    Returns:
        Row r holds the codes of ratings max(start, r - L) .. r - 1 of its user,
        left-padded with 0: the most recent earlier item in column L - 1, a
        user's first rating all 0.

    Example:
        history_matrix([0, 0, 0, 1], [5, 6, 7, 8], 2) ->
        [[0, 0], [0, 5], [5, 6], [0, 0]]
    """
    if length < 1:
        raise ValueError(f"expected a history length >= 1, got {length}")
    user_rows = np.asarray(user_rows)
    codes = np.asarray(item_codes, dtype=np.int64)
    if codes.shape != user_rows.shape:
        raise ValueError(
            f"expected one item code per rating, shape {user_rows.shape}, got {codes.shape}"
        )
    starts = _user_starts(user_rows)
    n = codes.shape[0]
    # position r - L + j of column j; valid from the user's first rating on
    index = np.arange(n, dtype=np.int64)[:, None] + np.arange(-length, 0, dtype=np.int64)
    valid = index >= starts[:, None]
    return np.where(valid, codes[np.maximum(index, 0)], 0) if n else np.zeros((0, length), np.int64)


def strictly_later(user_rows: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """(R,) bool: the rating's timestamp is strictly later than its user's previous rating's.

    Within one second the split orders ratings by item id, an artificial order;
    evaluation reports the users whose held-out rating is strictly later than the
    one before it separately (the `*_later_*` metrics). A user's first rating is True.
    """
    ts = np.asarray(timestamps)
    starts = _user_starts(user_rows)
    n = ts.shape[0]
    previous = ts[np.maximum(np.arange(n) - 1, 0)]
    return (np.arange(n) == starts) | (ts > previous)


def latest_items(
    user_rows: np.ndarray, item_codes: np.ndarray, num_users: int, length: int
) -> np.ndarray:
    """(num_users, length) int64: each user's `length` most recent item codes, all of them.

    What a served model sees as a known user's history: the user's interactions so
    far, left-padded with 0, the most recent last. Ratings must be grouped by user in
    time order; a user without ratings (or a row >= the users seen) is all 0.

    Example:
        latest_items([0, 0, 0, 2], [5, 6, 7, 8], 3, 2) -> [[6, 7], [0, 0], [0, 8]]
    """
    user_rows = np.asarray(user_rows, dtype=np.int64)
    codes = np.asarray(item_codes, dtype=np.int64)
    out = np.zeros((num_users, length), dtype=np.int64)
    if user_rows.size == 0:
        return out
    starts = _user_starts(user_rows)
    last = np.r_[user_rows[1:] != user_rows[:-1], True]  # the last rating of each user
    ends = np.flatnonzero(last) + 1  # exclusive end of each user's run
    index = ends[:, None] + np.arange(-length, 0)  # (users, L)
    valid = index >= starts[ends - 1][:, None]
    out[user_rows[ends - 1]] = np.where(valid, codes[np.maximum(index, 0)], 0)
    return out


class HistoryWindows:
    """An (M, L) history matrix kept as the rating sequence its rows are windows of.

    Row m is `history_matrix(user_rows, item_codes, L)[rows[m]]`: the codes of the
    `depth[r]` ratings before rating r = rows[m], left-padded with 0 (depth[r] =
    min(L, ratings of r's user before r)). Per rating it stores a code (int32) and
    a depth (uint8, int16 beyond L = 255), plus an int32 per selected row: about
    9 bytes per training positive instead of the matrix's 8 L.

    `take(index)` cuts a batch's rows ((B, L) int64, on the windows' device);
    `windows[selection]` gives materialised rows as a numpy array, like the matrix.

    Example:
        w = HistoryWindows.build([0, 0, 0, 1], [5, 6, 7, 8], 2)
        w.take(torch.tensor([2, 0])) -> [[5, 6], [0, 0]]
        w.select(np.array([False, True, True, False])).numpy() -> [[0, 5], [5, 6]]
    """

    def __init__(
        self,
        codes: torch.Tensor,
        depth: torch.Tensor,
        length: int,
        rows: torch.Tensor | None = None,
    ) -> None:
        if codes.shape != depth.shape or codes.dim() != 1:
            raise ValueError(
                f"expected codes and depth of one shape (R,), got {tuple(codes.shape)} "
                f"and {tuple(depth.shape)}"
            )
        self.length = int(length)
        # L zeros, then each rating's item code (int32): rating r's window is
        # padded[r : r + L], the L codes before it, and unfold gives all windows as a view
        self.padded = torch.cat([codes.new_zeros(self.length), codes.to(torch.int32)])
        self.depth = depth  # (R,) how many of the L columns of each rating's row are set
        self.rows = rows  # (M,) int32, the rating of each row; None: every rating in order

    @property
    def codes(self) -> torch.Tensor:
        """(R,) int32, each rating's item code."""
        return self.padded[self.length :]

    @classmethod
    def build(cls, user_rows: np.ndarray, item_codes: np.ndarray, length: int) -> HistoryWindows:
        """What `history_matrix(user_rows, item_codes, length)` gives, as windows."""
        if length < 1:
            raise ValueError(f"expected a history length >= 1, got {length}")
        codes = np.asarray(item_codes)
        if codes.shape != np.shape(user_rows):
            raise ValueError(
                f"expected one item code per rating, shape {np.shape(user_rows)}, got {codes.shape}"
            )
        if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.int32).max):
            raise ValueError(
                f"expected item codes in [0, 2**31), got {codes.min()} to {codes.max()}"
            )
        starts = _user_starts(user_rows)
        depth = np.minimum(np.arange(codes.shape[0]) - starts, length)
        depth_type = np.uint8 if length <= np.iinfo(np.uint8).max else np.int16
        return cls(
            torch.from_numpy(codes.astype(np.int32)),
            torch.from_numpy(depth.astype(depth_type)),
            length,
        )

    def _with(self, padded: torch.Tensor, depth: torch.Tensor, rows: torch.Tensor | None):
        """These windows with other tensors (moved, or other rows): no copy of the codes."""
        windows = object.__new__(HistoryWindows)
        windows.length = self.length
        windows.padded, windows.depth, windows.rows = padded, depth, rows
        return windows

    def __len__(self) -> int:
        return self.depth.shape[0] if self.rows is None else self.rows.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.length)

    @property
    def nbytes(self) -> int:
        parts = [self.padded, self.depth] + ([] if self.rows is None else [self.rows])
        return sum(t.numel() * t.element_size() for t in parts)

    def select(self, selection: Any) -> HistoryWindows:
        """The rows at `selection` (a bool mask, an index array or a slice) as windows."""
        picked = np.arange(len(self))[selection]
        rows = torch.from_numpy(picked.astype(np.int32)).to(self.depth.device)
        if self.rows is not None:
            rows = self.rows[rows.long()]
        return self._with(self.padded, self.depth, rows)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """(B, L) int64: the rows at `index` (a (B,) tensor on the windows' device)."""
        ratings = index.long() if self.rows is None else self.rows[index].long()  # (B,)
        L = self.length
        windows = self.padded.unfold(0, L, 1)  # (R + 1, L) view: row r = padded[r : r + L]
        codes = windows.index_select(0, ratings)  # (B, L) int32
        # column j holds a rating of the user iff j >= L - depth; the others are padding
        columns = torch.arange(L, device=ratings.device)  # (L,)
        keep = columns >= L - self.depth[ratings].long().unsqueeze(1)  # (B, L)
        return (codes * keep).long()

    def to(self, device: str | torch.device) -> HistoryWindows:
        rows = None if self.rows is None else self.rows.to(device)
        return self._with(self.padded.to(device), self.depth.to(device), rows)

    def numpy(self) -> np.ndarray:
        """(M, L) int64, every row materialised (the matrix history_matrix gives)."""
        return self.take(torch.arange(len(self), device=self.depth.device)).cpu().numpy()

    def __getitem__(self, selection: Any) -> np.ndarray:
        """Materialised rows at `selection`, (k, L) int64, as indexing the matrix gives."""
        return self.select(selection).numpy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self.numpy()
        return rows if dtype is None else rows.astype(dtype)

    def __repr__(self) -> str:
        return f"HistoryWindows(shape={self.shape}, {self.nbytes:,} bytes)"
