"""Behaviour history at serving time: a known user's latest items, or the request's own.

A model with a `history` field scores each row with the user's most recent items
(DESIGN.md, "Behaviour history"). At serving time a known user's history is the
user's bundled training interactions, the most recent last; a row for an unknown
user may send a `history` column: a list of movie ids, most recent last (or
"50|172|181"); without one its history is empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ctr.data.history import latest_items
from ctr.serving.errors import ServingInputError

if TYPE_CHECKING:
    from ctr.serving.recommender import Recommender


def bundled_histories(
    model: torch.nn.Module,
    preprocessor: Any,
    train_items: pd.DataFrame,
    user_rows: np.ndarray,
    known: np.ndarray,
) -> torch.Tensor | None:
    """(U + 1, L) each known user's most recent L training items, encoded; the last row,
    for unknown users, all 0. None when the model has no `history` field.

    Args:
        train_items: user_id, movie_id of the training interactions, each user's in
            time order (the order is kept within a user).
        user_rows: (N,) row of each interaction's user in the user table.
        known: (N,) bool, the interaction's user and movie are in the tables.
    """
    schema = getattr(model, "schema", None)
    if schema is None or "history" not in schema:
        return None
    num_users = len(preprocessor.user_ids)
    codes = preprocessor.encoders["movie_id"].transform(train_items["movie_id"].to_numpy())
    rows = np.where(known, user_rows, num_users)  # skipped rows land on the unknown row
    order = np.argsort(rows, kind="stable")  # grouped by user, each user's order kept
    table = latest_items(rows[order], codes[order], num_users + 1, schema["history"].max_length)
    table[-1] = 0
    return torch.from_numpy(table)


def request_histories(
    recommender: Recommender, frame: pd.DataFrame, user_ids: np.ndarray
) -> torch.Tensor:
    """(R, L) encoded history of each request row: a known user's bundled items; for an
    unknown user the row's `history` list if the frame has that column, else empty."""
    table = recommender.user_history
    length = table.shape[1]
    rows = recommender.preprocessor.user_rows(user_ids)
    out = table[torch.from_numpy(np.where(rows >= 0, rows, -1))].clone()
    if "history" not in frame.columns:
        return out
    encoder = recommender.preprocessor.encoders["movie_id"]
    values = frame["history"].tolist()
    for i in np.flatnonzero(rows < 0):  # unknown users only: known ones use the bundle
        value = values[i]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        if isinstance(value, str):
            value = [v for v in value.split("|") if v.strip()]
        try:
            ids = np.asarray(list(value), dtype=np.int64)
        except (TypeError, ValueError):
            raise ServingInputError(
                f"expected column 'history' to hold lists of movie ids (most recent last) "
                f"or '50|172|181' strings, got {value!r} in row {i}"
            ) from None
        codes = np.asarray(encoder.transform(ids[-length:]), dtype=np.int64)
        out[i] = 0
        if codes.size:
            out[i, length - codes.size :] = torch.from_numpy(codes)
    return out
