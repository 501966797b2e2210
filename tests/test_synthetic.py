"""The synthetic generator (ctr.data.synthetic) and its adapter, at a small size."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ctr.config import DataConfig, FeatureConfig
from ctr.data import SyntheticAdapter, generate_interactions, get_adapter
from ctr.data.synthetic import GENRES, parse_synthetic_name, synthetic_shape

USERS, ITEMS, INTERACTIONS = 2_000, 500, 50_000


@pytest.fixture(scope="module")
def raw():
    return generate_interactions(USERS, ITEMS, INTERACTIONS, seed=3)


def test_deterministic_for_a_seed(raw):
    again = generate_interactions(USERS, ITEMS, INTERACTIONS, seed=3)
    pd.testing.assert_frame_equal(raw.ratings, again.ratings)
    pd.testing.assert_frame_equal(raw.items, again.items)
    other = generate_interactions(USERS, ITEMS, INTERACTIONS, seed=4)
    assert not raw.ratings["movie_id"].equals(other.ratings["movie_id"])


def test_shapes_and_unique_pairs(raw):
    ratings = raw.ratings
    assert len(ratings) == INTERACTIONS
    assert list(ratings.columns) == ["user_id", "movie_id", "rating", "timestamp"]
    assert raw.users["user_id"].tolist() == list(range(1, USERS + 1))
    assert raw.items["movie_id"].tolist() == list(range(1, ITEMS + 1))
    assert ratings["user_id"].between(1, USERS).all()
    assert ratings["movie_id"].between(1, ITEMS).all()
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    assert set(ratings["rating"]) <= {r / 2 for r in range(1, 11)}
    assert all(1 <= len(g) <= len(GENRES) for g in raw.items["genres"])
    assert sorted(raw.genre_names) == sorted(GENRES)


def test_activity_is_heavy_tailed_with_three_per_user_and_timestamps_increase(raw):
    ratings = raw.ratings
    counts = ratings.groupby("user_id").size()
    assert len(counts) == USERS
    assert counts.min() >= 3
    assert counts.max() <= ITEMS // 2  # every user keeps training negatives to draw
    assert counts.max() > 5 * counts.median()  # a long tail of heavy users
    gaps = ratings.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps > 0).all()  # strictly increasing along each user's rows


def test_item_popularity_follows_a_power_law(raw):
    popularity = np.sort(raw.ratings["movie_id"].value_counts().to_numpy())[::-1]
    share_top1 = popularity[: ITEMS // 100].sum() / INTERACTIONS
    share_top10 = popularity[: ITEMS // 10].sum() / INTERACTIONS
    assert share_top1 > 0.10  # 10x what a uniform draw gives
    assert share_top10 > 0.40
    # popularity is not in id order: ids are renamed after the draw
    counts = raw.ratings["movie_id"].value_counts().reindex(range(1, ITEMS + 1), fill_value=0)
    assert abs(np.corrcoef(counts.index, counts.to_numpy())[0, 1]) < 0.3


def test_sizes_and_names():
    assert synthetic_shape(20_000_000) == (138_493, 26_744)
    assert synthetic_shape(1_000_000) == (6_925, 5_980)
    assert parse_synthetic_name("synthetic") == 20_000_000
    assert parse_synthetic_name("synthetic-50k") == 50_000
    assert parse_synthetic_name("synthetic-5m") == 5_000_000
    with pytest.raises(ValueError, match="synthetic-100k"):
        parse_synthetic_name("synthetic-lots")
    with pytest.raises(ValueError, match="between 300 and 500 interactions"):
        generate_interactions(100, 10, 10_000)
    adapter = get_adapter("synthetic-100k")
    assert isinstance(adapter, SyntheticAdapter)
    assert adapter.sizes == (692, 1_891, 100_000)
    assert get_adapter("synthetic").sizes == (138_493, 26_744, 20_000_000)


def test_the_adapter_goes_through_the_protocol():
    logging.getLogger("ctr.data.movielens").setLevel(logging.ERROR)
    config = DataConfig(dataset="synthetic", num_negatives=2, num_eval_negatives=49)
    adapter = SyntheticAdapter(
        None, config, FeatureConfig(max_genres=4), num_users=300, num_items=200,
        num_interactions=6_000,
    )  # fmt: skip
    schema, train, val, test = adapter.build()
    assert schema.field_names == ["user_id", "movie_id", "genres"]
    assert train.num_positives == 6_000 - 2 * 300
    for split in (val, test):
        assert split.candidate_items.shape == (300, 50)
        held_out = adapter.split_interactions(split.name).set_index("user_id")["movie_id"]
        np.testing.assert_array_equal(split.candidate_items[:, 0], held_out[split.user_ids])
    known = adapter.ratings.groupby("user_id")["movie_id"].agg(set)
    for user, items in zip(val.user_ids, val.candidate_items, strict=True):
        assert not set(items[1:].tolist()) & known[user]
    rows = train.sample_epoch(1, seed=0)
    assert len(rows) == 3 * train.num_positives
    # the same data on every build: the generator's seed is fixed
    again = SyntheticAdapter(
        None, config, FeatureConfig(max_genres=4), num_users=300, num_items=200,
        num_interactions=6_000,
    ).build()  # fmt: skip
    np.testing.assert_array_equal(again[2].candidate_items, val.candidate_items)
