"""The leave-one-out protocol of ctr.data.movielens.protocol, apart from the adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctr.data.movielens import (
    FIELD_ORDER,
    EncodedRatings,
    MovieLensPreprocessor,
    build_eval_split,
    build_train_set,
    leave_one_out_split,
    read_movielens,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "ml-100k"


@pytest.fixture(scope="module")
def encoded():
    raw = read_movielens(DATA_DIR)
    ratings = leave_one_out_split(raw.ratings)
    split = ratings["split"].to_numpy()
    pre = MovieLensPreprocessor.fit(ratings[split == "train"], raw.users, raw.items, 6)
    return raw, ratings, split, pre, EncodedRatings.from_preprocessor(pre, ratings, FIELD_ORDER)


def test_split_with_other_column_names_matches_movielens_columns(encoded):
    raw, ratings, _, _, _ = encoded
    renamed = raw.ratings.rename(
        columns={"user_id": "UserID", "movie_id": "MovieID", "timestamp": "Timestamp"}
    )
    split = leave_one_out_split(
        renamed, user_column="UserID", item_column="MovieID", time_column="Timestamp"
    )
    np.testing.assert_array_equal(split["split"].to_numpy(), ratings["split"].to_numpy())
    np.testing.assert_array_equal(split["MovieID"].to_numpy(), ratings["movie_id"].to_numpy())


def test_split_breaks_timestamp_ties_by_item_id():
    ratings = pd.DataFrame(
        {"user_id": [1, 1, 1, 1], "movie_id": [9, 3, 5, 7], "timestamp": [5, 5, 5, 1]}
    )
    split = leave_one_out_split(ratings)
    assert split["movie_id"].tolist() == [7, 3, 5, 9]
    assert split["split"].tolist() == ["train", "train", "val", "test"]


def test_train_set_and_eval_split_from_encoded_ratings(encoded):
    _, _, split, pre, enc = encoded
    train = build_train_set(enc, split == "train", num_negatives=2)
    assert train.num_positives == 98_114
    assert list(train.positives.features) == list(FIELD_ORDER)
    val, topped_up = build_eval_split("val", enc, split == "val", 99, eval_seed=7)
    assert val.num_candidates == 100
    assert len(val.user_ids) == 943
    assert topped_up == {}  # every user has at least 99 never-interacted items
    assert list(val.candidates.features) == list(FIELD_ORDER)
    _, topped_up = build_eval_split("test", enc, split == "test", 999, eval_seed=7)
    assert topped_up == {405: 1682 - 737, 655: 1682 - 685}
    # the encoded rows are the preprocessor's encoding of the raw ids
    rows = enc.gather(enc.user_rows[:5], enc.item_rows[:5])
    raw_ids = {
        "user_id": pre.user_ids[enc.user_rows[:5]],
        "movie_id": pre.item_ids[enc.item_rows[:5]],
    }
    expected = pre.encode_frame(pd.DataFrame(raw_ids))
    for name in FIELD_ORDER:
        assert torch.equal(rows[name], torch.from_numpy(expected[name])), name


def test_inputs_are_checked(encoded):
    _, ratings, split, pre, enc = encoded
    with pytest.raises(ValueError, match="expected every rating's user and item"):
        EncodedRatings.from_preprocessor(pre, ratings.assign(movie_id=99_999), FIELD_ORDER)
    with pytest.raises(ValueError, match=r"expected every field of field_order.*\['rating'\]"):
        EncodedRatings.from_preprocessor(pre, ratings, (*FIELD_ORDER, "rating"))
    with pytest.raises(ValueError, match="expected is_train as a bool array of shape"):
        build_train_set(enc, np.flatnonzero(split == "train"), num_negatives=2)
    with pytest.raises(ValueError, match="expected split name 'val' or 'test', got 'train'"):
        build_eval_split("train", enc, split == "train", 99, eval_seed=7)
    with pytest.raises(ValueError, match="expected in_split as a bool array"):
        build_eval_split("val", enc, (split == "val")[:-1], 99, eval_seed=7)
