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
    later = strictly_later(enc.user_rows, timestamps)       # (R,) bool

Everything is vectorised over the R ratings: one (R, L) index array, no
per-row or per-user Python.
"""

from __future__ import annotations

import numpy as np


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
