"""The leave-one-out protocol: from rated (user, item) pairs to a training set and
evaluation splits.

Nothing here is specific to MovieLens-100K. Any ratings frame with user, item and
timestamp columns, and any fitted preprocessor that maps raw ids to the rows of
its user table and its catalogue and encodes both tables, goes the same way:

    ratings = leave_one_out_split(raw_ratings)           # sorted, with a `split` column
    split = ratings["split"].to_numpy()
    enc = EncodedRatings.from_preprocessor(preprocessor, ratings, field_order)
    train_ds = build_train_set(enc, split == "train", num_negatives)
    val_ds, topped_up = build_eval_split("val", enc, split == "val", 999, eval_seed)

- training: K negatives per positive, drawn each epoch among the items the
  user has no TRAINING interaction with (NegativeSamplingTrainSet);
- validation / test: per user the held-out positive + C - 1 negatives drawn once
  (seeded by `eval_seed` and the split) among the items the user never
  interacted with, and for full ranking the user's other known items to skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctr.data.dataset import EvalSplit
from ctr.data.history import HistoryWindows
from ctr.data.masks import InteractionMask, row_counts
from ctr.data.sampling import (
    EVAL_STREAM,
    NegativeSamplingTrainSet,
    sample_eval_candidates,
    seed_entropy,
)

_SPLIT_CODES = {"val": 1, "test": 2}  # entropy tag of each split's candidate draw


def leave_one_out_split(
    ratings: pd.DataFrame,
    user_column: str = "user_id",
    item_column: str = "movie_id",
    time_column: str = "timestamp",
) -> pd.DataFrame:
    """Sort by (user, timestamp, item) and tag each row "train", "val" or "test".

    Per user the last interaction is test and the second-to-last validation.
    Returns a copy with a `split` column, in that sorted order.
    """
    df = ratings.sort_values([user_column, time_column, item_column], kind="stable")
    df = df.reset_index(drop=True)
    from_end = df.groupby(user_column, sort=False).cumcount(ascending=False).to_numpy()
    split = np.full(len(df), "train", dtype=object)
    split[from_end == 1] = "val"
    split[from_end == 0] = "test"
    df["split"] = split
    return df


@dataclass
class EncodedRatings:
    """Every rating as (user row, catalogue row) plus the encoded feature tables.

    Rows keep the order of the ratings they were encoded from.
    """

    user_rows: np.ndarray  # (R,) row in the user table
    item_rows: np.ndarray  # (R,) row in the catalogue
    user_ids: np.ndarray  # (U,) raw ids of the user table rows
    item_ids: np.ndarray  # (I,) raw ids of the catalogue rows
    user_features: dict[str, torch.Tensor]  # field -> (U,)
    item_features: dict[str, torch.Tensor]  # field -> (I,) or (I, L)
    known_mask: InteractionMask  # (U, I) bool, bit-packed: rated in any split
    field_order: tuple[str, ...]  # every field, user- and item-side, in the schema's order
    # (R, L) each rating's behaviour history, or None: the `history` field of the training
    # positives and of each evaluation user; HistoryWindows (ctr.data.history) or the matrix
    history: HistoryWindows | np.ndarray | None = None
    # (R,) bool, the rating is strictly later than its user's previous one (None: no timestamps)
    later: np.ndarray | None = None

    @classmethod
    def from_preprocessor(
        cls,
        pre: Any,
        ratings: pd.DataFrame,
        field_order: tuple[str, ...],
        user_column: str = "user_id",
        item_column: str = "movie_id",
    ) -> EncodedRatings:
        """Map each rating's ids to table rows and encode the user table and the catalogue.

        Args:
            pre: a fitted preprocessor (e.g. MovieLensPreprocessor) with
                user_rows(ids) / item_rows(ids) (-1 where unknown), user_ids /
                item_ids (raw ids of the table rows) and user_table_features() /
                catalogue_features() ({field: encoded column of the table}).
            ratings: one row per rating, with `user_column` and `item_column`.
            field_order: the fields of a row; each is in one of the two tables.
        """
        user_rows = pre.user_rows(ratings[user_column].to_numpy())
        item_rows = pre.item_rows(ratings[item_column].to_numpy())
        unknown = np.flatnonzero((user_rows < 0) | (item_rows < 0))
        if unknown.size:
            i = unknown[0]
            raise ValueError(
                f"expected every rating's user and item in the preprocessor's tables, got "
                f"{unknown.size} rating(s) that are not, the first: {user_column} "
                f"{ratings[user_column].iloc[i]}, {item_column} {ratings[item_column].iloc[i]}"
            )
        known = InteractionMask.from_pairs(
            user_rows, item_rows, (len(pre.user_ids), len(pre.item_ids))
        )
        enc = cls(
            user_rows=user_rows.astype(np.int64),
            item_rows=item_rows.astype(np.int64),
            user_ids=pre.user_ids,
            item_ids=pre.item_ids,
            user_features={k: torch.from_numpy(v) for k, v in pre.user_table_features().items()},
            item_features={k: torch.from_numpy(v) for k, v in pre.catalogue_features().items()},
            known_mask=known,
            field_order=tuple(field_order),
        )
        missing = [f for f in enc.field_order if f not in enc.user_features | enc.item_features]
        if missing:
            raise ValueError(
                f"expected every field of field_order in the user or item table, got {missing} "
                f"in neither (user fields {list(enc.user_features)}, item fields "
                f"{list(enc.item_features)})"
            )
        return enc

    def mask(self, rows: np.ndarray) -> InteractionMask:
        """(U, I) bool (bit-packed) of the ratings selected by the boolean `rows`."""
        return InteractionMask.from_pairs(
            self.user_rows[rows], self.item_rows[rows], self.known_mask.shape
        )

    def gather(self, user_rows: np.ndarray, item_rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Encoded rows of (user, item) pairs, every field in `field_order`."""
        users, items = torch.from_numpy(user_rows), torch.from_numpy(item_rows)
        return {
            f: (
                self.user_features[f].index_select(0, users)
                if f in self.user_features
                else self.item_features[f].index_select(0, items)
            )
            for f in self.field_order
        }

    def check_selection(self, rows: np.ndarray, what: str) -> np.ndarray:
        """`rows` as a boolean selection of the R ratings; a ValueError if it is not one."""
        rows = np.asarray(rows)
        if rows.dtype != bool or rows.shape != self.user_rows.shape:
            raise ValueError(
                f"expected {what} as a bool array of shape {self.user_rows.shape} (one per "
                f"rating), got {rows.dtype} of shape {rows.shape}"
            )
        return rows


def build_train_set(
    enc: EncodedRatings, is_train: np.ndarray, num_negatives: int
) -> NegativeSamplingTrainSet:
    """The training positives (the ratings where `is_train`) and their negative sampler.

    `enc` must hold each user's ratings in time order (as leave_one_out_split
    sorts them): a positive's recency rank counts its user's training ratings after it.
    No column is materialised: the train set gathers a batch's from the user and
    item tables, and its history from `enc.history`'s windows (or rows).
    """
    is_train = enc.check_selection(is_train, "is_train")
    user_rows, item_rows = enc.user_rows[is_train], enc.item_rows[is_train]  # (N,), (N,)
    context = {}
    if enc.history is not None:  # a positive sees its user's earlier training items
        history = enc.history
        context["history"] = (
            history.select(is_train)
            if isinstance(history, HistoryWindows)
            else torch.from_numpy(np.asarray(history)[is_train].astype(np.int32))  # (N, L)
        )
    by_user = pd.Series(user_rows).groupby(user_rows, sort=False)
    recency_rank = by_user.cumcount(ascending=False).to_numpy()  # 0 = user's last
    return NegativeSamplingTrainSet(
        None,
        user_rows,
        item_rows,
        enc.user_features,
        enc.item_features,
        enc.mask(is_train),
        num_negatives,
        item_ids=enc.item_ids,
        recency_rank=recency_rank,
        fields=(*enc.field_order, *context),
        context=context,
    )


def build_eval_split(
    name: str,
    enc: EncodedRatings,
    in_split: np.ndarray,
    num_negatives: int,
    eval_seed: int,
) -> tuple[EvalSplit, dict[int, int]]:
    """Candidates (positive + sampled negatives) and full-ranking lists of one split.

    Args:
        name: "val" or "test"; with `eval_seed` it seeds the candidate draw.
        enc: every rating, encoded.
        in_split: (R,) bool, the split's ratings: one held-out rating per user.
        num_negatives: C - 1 sampled negatives per user.

    Returns:
        (the split, {raw user id: size of its never-interacted pool} of the users
        whose pool is smaller than `num_negatives` and whose candidates repeat).
    """
    if name not in _SPLIT_CODES:
        raise ValueError(f"expected split name 'val' or 'test', got {name!r}")
    in_split = enc.check_selection(in_split, "in_split")
    order = np.argsort(enc.user_rows[in_split], kind="stable")
    split_users = enc.user_rows[in_split][order]  # (U,) one held-out rating per user
    positive = enc.item_rows[in_split][order]  # (U,)
    rng = np.random.default_rng(seed_entropy(eval_seed, _SPLIT_CODES[name], EVAL_STREAM))
    cand, topped_up = sample_eval_candidates(
        positive, enc.known_mask, num_negatives, rng, user_rows=split_users
    )  # (U, C)
    ids = enc.user_ids[split_users[topped_up]].tolist()
    num_items = enc.known_mask.shape[1]
    pools = (num_items - row_counts(enc.known_mask, split_users[topped_up])).tolist()
    num_candidates = 1 + num_negatives
    # a candidate row is its user's row of user_features beside its item's row of the
    # catalogue (EvalSplit.candidate_batch): no U * C rows are built here
    user_features = {
        f: t.index_select(0, torch.from_numpy(split_users)) for f, t in enc.user_features.items()
    }
    field_order = enc.field_order
    if enc.history is not None:  # every candidate of a user carries its held-out rating's history
        user_features["history"] = torch.from_numpy(np.asarray(enc.history[in_split])[order])
        field_order = (*field_order, "history")

    # full ranking skips the user's other known interactions (any split)
    num_users = len(split_users)
    slot = np.full(enc.known_mask.shape[0], -1, dtype=np.int64)
    slot[split_users] = np.arange(num_users)
    owner = slot[enc.user_rows]  # (R,) block of each rating's user, -1 if not in the split
    keep = (owner >= 0) & ~in_split
    pair_keys = np.sort(owner[keep] * num_items + enc.item_rows[keep])
    pair_keys = pair_keys[np.r_[True, pair_keys[1:] != pair_keys[:-1]]]  # unique (user, item)
    owners, items = np.divmod(pair_keys, num_items)
    other = items != positive[owners]  # a repeated rating of the positive stays rankable
    owners, items = owners[other], items[other]
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(owners, minlength=num_users))

    split = EvalSplit(
        name=name,
        num_candidates=num_candidates,
        user_ids=enc.user_ids[split_users],
        candidate_rows=cand.astype(np.int32),
        field_order=field_order,
        user_features=user_features,
        item_features=dict(enc.item_features),
        item_ids=enc.item_ids.copy(),
        positive_item_index=positive.astype(np.int64),
        exclude_indptr=indptr,
        exclude_items=items.astype(np.int64),
        strictly_later=None if enc.later is None else enc.later[in_split][order],
    )
    return split, dict(zip(ids, pools, strict=True))
