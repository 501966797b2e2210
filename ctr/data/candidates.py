"""Evaluation candidates: per user the held-out positive + C - 1 never-interacted items.

Negatives are a uniform sample without replacement from the user's pool (the
items it never interacted with); a pool smaller than C - 1 is taken whole and
topped up by draws from it with replacement. Two exact ways to draw it:

- dense (U * I <= DENSE_EVAL_MAX_CELLS, e.g. MovieLens-100K): one
  uniform random key per (user, item), known items get +inf, the C - 1
  smallest keys per row. Cost O(U * I); the keys are drawn in blocks of rows
  (`row_block`), the same stream as one (U, I) draw, so memory stays bounded
  and the candidates are those the unblocked draw gave.
- sparse (larger: MovieLens-1M, 23M cells, MovieLens-20M, 3.7e9): per user,
  uniform draws over the catalogue, rejecting known items and repeats, the
  first C - 1 accepted in draw order (each one uniform over what is left of
  the pool). Cost O(U * C * I / pool), in rounds over blocks of users whose
  scratch stays in cache, never a loop over users; users whose pool is not
  larger than C - 1 go the dense way.

Both are the same distribution; which one ran decides the exact candidates,
so a data set's candidates stay fixed for a given seed and size.
"""

from __future__ import annotations

import numpy as np

from ctr.data.masks import InteractionMask, dense_rows, row_block, row_counts

DENSE_EVAL_MAX_CELLS = 1 << 24  # users x items up to which the dense draw is used (ML-100K: 1.6M)
_SPARSE_SCRATCH_BYTES = 1 << 23  # per block of users in the sparse way


def sample_eval_candidates(
    positive_items: np.ndarray,
    known: np.ndarray | InteractionMask,
    num_negatives: int,
    rng: np.random.Generator,
    user_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per user: the positive followed by `num_negatives` items it never interacted with.

    Negatives are drawn uniformly without replacement from the user's pool
    (items where `known` is False). A user whose pool is smaller than
    `num_negatives` gets the whole pool, topped up by draws from the pool with
    replacement.

    Args:
        positive_items: (U,) item row of each user's held-out positive.
        known: (U', I) bool (dense or an InteractionMask), every interaction of
            the user in any split (the positive included).
        num_negatives: C - 1.
        rng: the source of randomness.
        user_rows: (U,) row of `known` of each positive's user; default: row u
            for positive u (then U' = U).

    Returns:
        candidates: (U, 1 + num_negatives) int64 item rows, column 0 = positive.
        topped_up: (T,) int64 indices (into the U users) of the topped-up users.
    """
    num_items = known.shape[1]
    if user_rows is None:
        user_rows = np.arange(known.shape[0])
    num_users = len(user_rows)
    if positive_items.shape != (num_users,):
        raise ValueError(
            f"expected one positive per user, shape ({num_users},), got {positive_items.shape}"
        )
    pool_sizes = num_items - row_counts(known, user_rows)
    empty = np.flatnonzero(pool_sizes == 0)
    if empty.size:
        raise ValueError(
            f"users at rows {empty.tolist()} interacted with every item: no evaluation "
            f"negatives can be drawn for them"
        )
    if num_users * num_items <= DENSE_EVAL_MAX_CELLS:
        negatives = _dense_negatives(known, user_rows, pool_sizes, num_negatives, rng)
    else:
        negatives = _sparse_negatives(known, user_rows, pool_sizes, num_negatives, rng)
    topped_up = np.flatnonzero(pool_sizes < num_negatives)
    candidates = np.concatenate([positive_items.astype(np.int64)[:, None], negatives], axis=1)
    return candidates, topped_up.astype(np.int64)


def _dense_negatives(known, user_rows, pool_sizes, num_negatives, rng) -> np.ndarray:
    """(U, num_negatives): the C - 1 smallest of one uniform key per (user, item)."""
    num_users, num_items = len(user_rows), known.shape[1]
    n = min(num_negatives, num_items)
    negatives = np.empty((num_users, num_negatives), dtype=np.int64)
    step = row_block(num_items)
    for start in range(0, num_users, step):  # blocks of rows: the keys stay ~64 MB
        rows = user_rows[start : start + step]
        keys = rng.random((len(rows), num_items))  # (b, I)
        keys[dense_rows(known, rows)] = np.inf
        if n < num_items:
            smallest = np.argpartition(keys, n - 1, axis=1)[:, :n]  # (b, n), unordered
        else:
            smallest = np.broadcast_to(np.arange(num_items), (len(rows), num_items))
        order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1, kind="stable")
        # (b, n): pool items first, by key
        negatives[start : start + len(rows), :n] = np.take_along_axis(smallest, order, axis=1)
    for u in np.flatnonzero(pool_sizes < num_negatives):  # only the few users with a short pool
        size = int(pool_sizes[u])
        negatives[u, size:] = rng.choice(negatives[u, :size], size=num_negatives - size)
    return negatives


def _sparse_negatives(known, user_rows, pool_sizes, num_negatives, rng) -> np.ndarray:
    """(U, num_negatives) by rejection: uniform draws, the first distinct pool items."""
    num_users, num_items = len(user_rows), known.shape[1]
    negatives = np.empty((num_users, num_negatives), dtype=np.int64)
    short = np.flatnonzero(pool_sizes <= num_negatives)  # the whole pool, in random order
    if short.size:
        negatives[short] = _dense_negatives(
            known, user_rows[short], pool_sizes[short], num_negatives, rng
        )
    rest = np.flatnonzero(pool_sizes > num_negatives)
    # blocks of users whose (b, I) scratch (1 + 4 bytes a cell) stays in cache (~8 MB):
    # its random reads and writes dominate the cost
    step = max(1, _SPARSE_SCRATCH_BYTES // (5 * num_items))
    for start in range(0, rest.size, step):
        users = rest[start : start + step]
        negatives[users] = _first_distinct(
            known, user_rows[users], pool_sizes[users], num_negatives, rng
        )
    return negatives


def _first_distinct(known, rows, pools, count, rng) -> np.ndarray:
    """(b, count): per user, the first `count` distinct items of uniform draws over
    the catalogue that are not known (each user's pool holds more than `count`)."""
    b, num_items = len(rows), known.shape[1]
    taken = dense_rows(known, rows).copy()  # (b, I): known, then also accepted
    first_draw = np.empty(b * num_items, dtype=np.int32)  # scratch, written before read
    out = np.empty((b, count), dtype=np.int64)
    have = np.zeros(b, dtype=np.int64)
    active = np.arange(b)
    while active.size:
        need = count - have[active]
        left = (pools[active] - have[active]).astype(np.float64)
        # uniform draws over the catalogue expected to give `need` new items of the pool
        m = np.ceil(num_items * np.log(left / (left - need)) * 1.2).astype(np.int64) + 16
        user = np.repeat(active, m)  # (M,) user-major, in draw order
        item = rng.integers(0, num_items, size=user.size, dtype=np.int64)
        free = ~taken[user, item]
        user, item = user[free], item[free]
        cell = user * num_items + item
        draw = np.arange(cell.size, dtype=np.int32)
        first_draw[cell] = np.iinfo(np.int32).max
        np.minimum.at(first_draw, cell, draw)
        first = first_draw[cell] == draw  # the first draw of each (user, item) this round
        user, item = user[first], item[first]
        counts = np.bincount(user, minlength=b)
        position = np.arange(user.size) - (np.cumsum(counts) - counts)[user]  # within user
        keep = position < (count - have)[user]
        user, item = user[keep], item[keep]
        out[user, have[user] + position[keep]] = item
        taken[user, item] = True
        have += np.bincount(user, minlength=b)
        active = np.flatnonzero(have < count)
    return out
