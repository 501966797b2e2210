"""MovieLens-100K adapter on the committed data: split, encoders, samplers, preprocessor."""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ctr.config import DataConfig, FeatureConfig
from ctr.data import (
    DataNotFoundError,
    FeatureType,
    MovieLensAdapter,
    MovieLensPreprocessor,
    NegativeSamplingTrainSet,
    TabularDataset,
    available_adapters,
    get_adapter,
)
from ctr.utils import seed_everything

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "ml-100k"
NUM_USERS, NUM_ITEMS, NUM_RATINGS = 943, 1682, 100_000
TOPPED_UP = {405: 1682 - 737, 655: 1682 - 685}  # user -> size of its never-interacted pool


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _build(data_dir: Path = DATA_DIR, **data_kwargs) -> tuple:
    adapter = MovieLensAdapter(data_dir, DataConfig(**data_kwargs), FeatureConfig())
    return (adapter, *adapter.build())


@pytest.fixture(scope="module")
def ml():
    logger = logging.getLogger("ctr.data.movielens")
    handler = _ListHandler()
    logger.addHandler(handler)
    try:
        adapter, schema, train, val, test = _build()
    finally:
        logger.removeHandler(handler)
    return SimpleNamespace(
        adapter=adapter, schema=schema, train=train, val=val, test=test, logs=handler.messages
    )


@pytest.fixture(scope="module")
def reference():
    """An independent, simple (per-user Python) reading of the protocol."""
    ratings = np.loadtxt(DATA_DIR / "u.data", dtype=np.int64)  # user item rating timestamp
    history = defaultdict(list)
    for user, item, _, ts in ratings.tolist():
        history[user].append((ts, item))
    train, val, test = set(), {}, {}
    for user, events in history.items():
        events.sort()
        test[user] = events[-1][1]
        val[user] = events[-2][1]
        train.update((user, item) for _, item in events[:-2])
    known = {(u, i) for u, events in history.items() for _, i in events}
    users = pd.read_csv(
        DATA_DIR / "u.user", sep="|", header=None, names=["user_id", "age", "g", "o", "zip"]
    )
    items = pd.read_csv(DATA_DIR / "u.item", sep="|", header=None, encoding="latin-1")
    genre_names = [
        line.split("|")[0] for line in (DATA_DIR / "u.genre").read_text().splitlines() if line
    ]
    genres = {
        int(row[0]): [genre_names[g] for g in range(19) if row[5 + g] == 1]
        for row in items.itertuples(index=False)
    }
    return SimpleNamespace(
        ratings=ratings, train=train, val=val, test=test, known=known, users=users, genres=genres
    )


def _pair_keys(users, items) -> np.ndarray:
    return np.asarray(users, dtype=np.int64) * 10_000 + np.asarray(items, dtype=np.int64)


# ------------------------------------------------------------------ sizes and split


def test_sizes(ml):
    assert ml.train.num_positives == NUM_RATINGS - 2 * NUM_USERS == 98_114
    assert len(ml.train.positives) == 98_114
    assert ml.train.num_negatives == 4
    assert len(ml.train) == 490_570
    assert len(ml.train.sample_epoch(1, 0)) == 490_570
    for split in (ml.val, ml.test):
        assert split.num_candidates == 1000
        assert len(split.candidates) == len(split) == 943_000  # evaluation rows: U x C
        assert split.candidate_items.shape == (NUM_USERS, 1000)
        np.testing.assert_array_equal(split.user_ids, np.arange(1, NUM_USERS + 1))
        assert split.item_ids.tolist() == list(range(1, NUM_ITEMS + 1))
        assert all(v.shape[0] == NUM_ITEMS for v in split.item_features.values())
        assert all(v.shape[0] == NUM_USERS for v in split.user_features.values())
    assert ml.val.name == "val" and ml.test.name == "test"


def test_split_matches_simple_reference(ml, reference):
    adapter = ml.adapter
    train = adapter.train_interactions
    assert set(zip(train.user_id, train.movie_id, strict=True)) == reference.train
    for name, split, expected in (
        ("val", ml.val, reference.val),
        ("test", ml.test, reference.test),
    ):
        rows = adapter.split_interactions(name)
        assert dict(zip(rows.user_id, rows.movie_id, strict=True)) == expected
        positives = {
            int(u): int(i) for u, i in zip(split.user_ids, split.candidate_items[:, 0], strict=True)
        }
        assert positives == expected
        np.testing.assert_array_equal(
            split.item_ids[split.positive_item_index], split.candidate_items[:, 0]
        )
    # the positives of the training set are exactly the training ratings
    t = ml.train
    keys = _pair_keys(adapter.user_ids[t.user_rows], adapter.item_ids[t.item_rows])
    assert len(np.unique(keys)) == len(keys) == len(reference.train)
    assert set(keys.tolist()) == {u * 10_000 + i for u, i in reference.train}


def test_schema_fields(ml):
    schema = ml.schema
    assert schema.field_names == [
        "user_id",
        "movie_id",
        "gender",
        "age",
        "occupation",
        "zip_prefix",
        "genres",
    ]
    assert [f.name for f in schema.sparse_fields] == schema.field_names[:-1]
    genres = schema["genres"]
    assert genres.feature_type is FeatureType.SEQUENCE
    assert (genres.max_length, genres.combiner) == (6, "mean")
    assert {f.name for f in schema.fields.values() if f.group == "user"} == {
        "user_id",
        "gender",
        "age",
        "occupation",
        "zip_prefix",
    }
    assert {f.name for f in schema.fields.values() if f.group == "item"} == {"movie_id", "genres"}
    vocab = {name: f.vocabulary_size for name, f in schema.fields.items()}
    # 943 users and 1,677 training movies + index 0; all 7 age buckets occur; 21 occupations
    assert vocab["user_id"] == 944
    assert vocab["movie_id"] == 1678
    assert vocab["gender"] == 3
    assert vocab["age"] == 8
    assert vocab["occupation"] == 22
    assert all(f.embedding_dim == 16 for f in schema.fields.values())
    features = ml.train.positives.features
    assert list(features) == schema.field_names
    assert features["genres"].shape == (98_114, 6)
    for f in schema.fields.values():
        assert int(features[f.name].max()) < f.vocabulary_size
        assert int(features[f.name].min()) >= 0


def test_unknown_field_in_field_embedding_dims_lists_the_fields():
    with pytest.raises(ValueError, match="user_idd.*user_id, movie_id, gender"):
        MovieLensAdapter(
            DATA_DIR, DataConfig(), FeatureConfig(field_embedding_dims={"user_idd": 4})
        )


def test_field_embedding_dims_reach_the_schema(ml):
    config = FeatureConfig(embedding_dim=8, field_embedding_dims={"user_id": 32})
    adapter = MovieLensAdapter(DATA_DIR, DataConfig(), config)
    schema = adapter.build_schema(ml.adapter.preprocessor)
    assert schema["user_id"].embedding_dim == 32
    assert schema["movie_id"].embedding_dim == 8


# ------------------------------------------------------------------ training negatives


def test_sample_epoch_layout(ml):
    train, adapter = ml.train, ml.adapter
    n, k = train.num_positives, train.num_negatives
    rows = train.sample_epoch(3, seed=11)
    assert torch.equal(rows.labels[:n], torch.ones(n))
    assert torch.equal(rows.labels[n:], torch.zeros(n * k))
    for name, column in train.positives.features.items():
        assert torch.equal(rows.features[name][:n], column), name
    neg = train.negative_items(3, seed=11)  # (N, K) catalogue rows
    assert neg.shape == (n, k)
    catalogue = adapter.preprocessor.catalogue_features()
    users = adapter.preprocessor.user_table_features()
    for j in range(k):
        idx = torch.arange(n) * k + j + n  # row N + i*K + j
        for name in ("user_id", "gender", "age", "occupation", "zip_prefix"):
            np.testing.assert_array_equal(
                rows.features[name][idx].numpy(), users[name][train.user_rows]
            )
        np.testing.assert_array_equal(
            rows.features["movie_id"][idx].numpy(), catalogue["movie_id"][neg[:, j]]
        )
        np.testing.assert_array_equal(
            rows.features["genres"][idx].numpy(), catalogue["genres"][neg[:, j]]
        )


def test_training_negatives_are_never_training_positives(ml, reference):
    train, adapter = ml.train, ml.adapter
    train_keys = np.array([u * 10_000 + i for u, i in reference.train])
    users = adapter.user_ids[train.user_rows]
    for epoch in (1, 2):
        neg_ids = train.negative_item_ids(epoch, seed=42)
        keys = _pair_keys(np.repeat(users, train.num_negatives), neg_ids.reshape(-1))
        assert not np.isin(keys, train_keys).any()


def test_training_negatives_include_held_out_items(ml, reference):
    """The pool ignores val/test: held-out items are drawn like any other."""
    train, adapter = ml.train, ml.adapter
    users = np.repeat(adapter.user_ids[train.user_rows], train.num_negatives)
    held_out = np.array(
        [u * 10_000 + reference.val[u] for u in reference.val]
        + [u * 10_000 + reference.test[u] for u in reference.test]
    )
    hits = sum(
        int(
            np.isin(
                _pair_keys(users, train.negative_item_ids(e, seed=0).reshape(-1)), held_out
            ).sum()
        )
        for e in (1, 2, 3)
    )
    # ~ 943 users * 2 items * (1 - (1 - 1/1500)^416) * 3 epochs ~ 1,300 expected
    assert hits > 300


def test_training_negatives_do_not_depend_on_held_out_interactions(ml, reference, tmp_path):
    """Replace every user's val and test item: the negatives of each epoch stay the same."""
    ratings = reference.ratings.copy()
    last_ts = int(ratings[:, 3].max())
    train_items = defaultdict(set)
    for u, i in reference.train:
        train_items[u].add(i)
    for row in range(len(ratings)):
        user, item = int(ratings[row, 0]), int(ratings[row, 1])
        for offset, held in ((1, reference.val), (2, reference.test)):
            if held[user] == item:
                taken = train_items[user] | {reference.val[user], reference.test[user]}
                free = [i for i in range(1, NUM_ITEMS + 1) if i not in taken]
                ratings[row, 1] = free[offset - 1]  # a different, never-rated item
                ratings[row, 3] = last_ts + offset  # and still the last two events
    altered = tmp_path / "ml-100k"
    shutil.copytree(DATA_DIR, altered)
    np.savetxt(altered / "u.data", ratings, fmt="%d", delimiter="\t")

    adapter, _, train2, val2, test2 = _build(altered)
    assert (val2.candidate_items[:, 0] != ml.val.candidate_items[:, 0]).all()
    assert (test2.candidate_items[:, 0] != ml.test.candidate_items[:, 0]).all()
    np.testing.assert_array_equal(adapter.train_mask, ml.adapter.train_mask)
    np.testing.assert_array_equal(train2.recency_rank, ml.train.recency_rank)
    for epoch in (1, 2):
        np.testing.assert_array_equal(
            train2.negative_items(epoch, seed=5), ml.train.negative_items(epoch, seed=5)
        )
        a, b = train2.sample_epoch(epoch, 5), ml.train.sample_epoch(epoch, 5)
        for name in a.features:
            assert torch.equal(a.features[name], b.features[name]), name


def test_recency_rank_counts_the_users_later_training_interactions(ml, reference):
    """Rank 0 is a user's last training rating in (timestamp, item) order; val/test don't count."""
    train, adapter = ml.train, ml.adapter
    history = defaultdict(list)
    for user, item, _, ts in reference.ratings.tolist():
        if (user, item) in reference.train:
            history[user].append((ts, item))
    expected = {}
    for user, events in history.items():
        events.sort()
        for position, (_, item) in enumerate(events):
            expected[user * 10_000 + item] = len(events) - 1 - position
    keys = _pair_keys(adapter.user_ids[train.user_rows], adapter.item_ids[train.item_rows])
    np.testing.assert_array_equal(train.recency_rank, [expected[k] for k in keys.tolist()])
    assert train.recency_rank.min() == 0


def test_recency_weights_halve_every_half_life_down_to_the_floor():
    positives = TabularDataset(
        {"user_id": torch.tensor([1, 1, 1, 1]), "movie_id": torch.tensor([1, 2, 3, 4])},
        torch.ones(4),
    )
    mask = np.zeros((2, 6), dtype=bool)
    mask[1, 1:5] = True
    args = (
        positives,
        np.array([1, 1, 1, 1]),
        np.array([1, 2, 3, 4]),
        {"user_id": torch.arange(2)},
        {"movie_id": torch.arange(6)},
        mask,
        2,
    )
    train = NegativeSamplingTrainSet(*args, recency_rank=np.array([3, 2, 1, 0]))
    raw = np.array([0.2, 0.25, 0.5, 1.0])  # 0.5 ** (r / 1), 0.125 floored at 0.2
    np.testing.assert_allclose(
        train.recency_weights(half_life=1.0, floor=0.2).numpy(), raw / raw.mean(), rtol=1e-6
    )
    assert train.recency_weights(half_life=1.0, floor=1.0).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="recency_rank of shape"):
        NegativeSamplingTrainSet(*args, recency_rank=np.array([1, 0]))
    with pytest.raises(ValueError, match="unset training.recency_half_life"):
        NegativeSamplingTrainSet(*args).recency_weights(half_life=1.0, floor=0.1)


def test_negatives_are_deterministic_per_seed_and_epoch_and_fresh_each_epoch(ml):
    train = ml.train
    e1 = train.negative_items(1, seed=42)
    np.testing.assert_array_equal(e1, train.negative_items(1, seed=42))
    assert (e1 != train.negative_items(2, seed=42)).mean() > 0.99
    assert (e1 != train.negative_items(1, seed=43)).mean() > 0.99
    a, b = train.sample_epoch(1, 42), train.sample_epoch(1, 42)
    assert all(torch.equal(a.features[k], b.features[k]) for k in a.features)


# ------------------------------------------------------------------ evaluation candidates


@pytest.mark.parametrize("split_name", ["val", "test"])
def test_eval_negatives_were_never_interacted_with(ml, reference, split_name):
    split = getattr(ml, split_name)
    known = np.array([u * 10_000 + i for u, i in reference.known])
    users = np.repeat(split.user_ids, split.num_candidates - 1)
    negatives = split.candidate_items[:, 1:]
    assert not np.isin(_pair_keys(users, negatives.reshape(-1)), known).any()
    labels = split.candidates.labels.view(NUM_USERS, 1000)
    assert torch.equal(labels[:, 0], torch.ones(NUM_USERS))
    assert torch.equal(labels[:, 1:], torch.zeros(NUM_USERS, 999))
    for row, user in enumerate(split.user_ids.tolist()):
        distinct = np.unique(negatives[row])
        if user in TOPPED_UP:
            # the whole pool, topped up with repeats drawn from the pool
            rated = {i for u, i in reference.known if u == user}
            assert set(distinct.tolist()) == set(range(1, NUM_ITEMS + 1)) - rated
            assert len(distinct) == TOPPED_UP[user]
        else:
            assert len(distinct) == 999, user


def test_topped_up_users_are_logged(ml):
    assert ml.adapter.topped_up_users == {"val": [405, 655], "test": [405, 655]}
    warnings = [m for m in ml.logs if "405" in m and "655" in m]
    assert len(warnings) == 2
    assert "replacement" in warnings[0]


def test_candidates_carry_the_items_own_features(ml):
    split, pre = ml.val, ml.adapter.preprocessor
    catalogue = pre.catalogue_features()
    rows = split.candidate_items.reshape(-1) - 1  # item ids 1..1682 are catalogue rows 0..1681
    np.testing.assert_array_equal(
        split.candidates.features["movie_id"].numpy(), catalogue["movie_id"][rows]
    )
    np.testing.assert_array_equal(
        split.candidates.features["genres"].numpy(), catalogue["genres"][rows]
    )
    users = np.repeat(split.user_ids - 1, 1000)
    for name in ("user_id", "gender", "age", "occupation", "zip_prefix"):
        np.testing.assert_array_equal(
            split.candidates.features[name].numpy(), pre.user_table_features()[name][users]
        )
        np.testing.assert_array_equal(
            split.user_features[name].numpy(), pre.user_table_features()[name]
        )
    for name in ("movie_id", "genres"):
        np.testing.assert_array_equal(split.item_features[name].numpy(), catalogue[name])


def test_candidates_depend_only_on_eval_seed(ml):
    seed_everything(12345)  # the experiment seed must not matter
    _, _, _, val, test = _build()
    np.testing.assert_array_equal(val.candidate_items, ml.val.candidate_items)
    np.testing.assert_array_equal(test.candidate_items, ml.test.candidate_items)
    _, _, _, val_other, _ = _build(eval_seed=7)
    np.testing.assert_array_equal(val_other.candidate_items[:, 0], ml.val.candidate_items[:, 0])
    assert (val_other.candidate_items[:, 1:] != ml.val.candidate_items[:, 1:]).mean() > 0.9
    # val and test draws are distinct streams
    assert (ml.val.candidate_items[:, 1:] != ml.test.candidate_items[:, 1:]).mean() > 0.9


def test_exclusion_lists_hold_the_other_known_interactions(ml, reference):
    for split, held in ((ml.val, reference.val), (ml.test, reference.test)):
        history = defaultdict(set)
        for u, i in reference.known:
            history[u].add(i)
        for row, user in enumerate(split.user_ids.tolist()):
            excluded = split.item_ids[split.excluded_for(row)]
            assert len(np.unique(excluded)) == len(excluded)
            assert set(excluded.tolist()) == history[user] - {held[user]}
        assert split.exclude_indptr[-1] == NUM_RATINGS - NUM_USERS


# ------------------------------------------------------------------ encoders


def test_encoders_are_fitted_on_training_rows_only(ml, reference):
    enc = ml.adapter.preprocessor.encoders
    train_items = {i for _, i in reference.train}
    train_users = {u for u, _ in reference.train}
    assert enc["movie_id"].classes_ == sorted(train_items)
    assert enc["user_id"].classes_ == sorted(train_users)
    assert enc["genres"].tokens_ == sorted({g for i in train_items for g in reference.genres[i]})
    zips = reference.users.set_index("user_id")["zip"].astype(str)
    assert enc["zip_prefix"].classes_ == sorted({zips[u][:3] for u in train_users})


def test_movies_only_in_val_or_test_encode_to_zero_but_keep_genres(ml, reference):
    train_items = {i for _, i in reference.train}
    unseen = sorted({i for _, i in reference.known} - train_items)
    assert len(unseen) == 5
    pre = ml.adapter.preprocessor
    rows = pd.DataFrame({"user_id": [1] * 5, "movie_id": unseen})
    encoded = pre.encode_frame(rows)
    assert (encoded["movie_id"] == 0).all()
    assert (encoded["genres"] > 0).any(axis=1).all()
    catalogue = pre.catalogue_features()
    for movie in unseen:
        assert catalogue["movie_id"][movie - 1] == 0
        assert catalogue["genres"][movie - 1].any()
    # they are scorable candidates: present in some user's candidate block with genres
    in_candidates = np.isin(ml.val.candidate_items, unseen) | np.isin(
        ml.test.candidate_items, unseen
    )
    assert in_candidates.any()


def test_item_popularity_counts_training_positives(ml, reference):
    popularity = ml.adapter.item_popularity
    enc = ml.adapter.preprocessor.encoders["movie_id"]
    assert popularity.shape == (enc.vocabulary_size,)
    assert popularity[0] == 0
    assert popularity.sum() == 98_114
    counts = defaultdict(int)
    for _, i in reference.train:
        counts[i] += 1
    codes = enc.transform(np.array([50, 1, 1682]))
    assert popularity[codes].tolist() == [counts[50], counts[1], counts[1682]]


# ------------------------------------------------------------------ preprocessor


def test_preprocessor_json_round_trip_encodes_identically(ml):
    pre = ml.adapter.preprocessor
    text = json.dumps(pre.to_dict())
    loaded = MovieLensPreprocessor.from_dict(json.loads(text))
    assert loaded.to_dict() == pre.to_dict()
    rows = pd.DataFrame(
        {
            "user_id": np.repeat(ml.val.user_ids[:50], 20),
            "movie_id": ml.val.candidate_items[:50, :20].reshape(-1),
        }
    )
    a, b = pre.encode_frame(rows), loaded.encode_frame(rows)
    assert list(a) == list(b) == ml.schema.field_names
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for name in ("movie_id", "genres"):
        np.testing.assert_array_equal(
            pre.catalogue_features()[name], loaded.catalogue_features()[name]
        )


def test_encode_frame_of_raw_ids_reproduces_the_val_candidates(ml):
    split = ml.val
    rows = pd.DataFrame(
        {
            "user_id": np.repeat(split.user_ids, split.num_candidates),
            "movie_id": split.candidate_items.reshape(-1),
        }
    )
    encoded = ml.adapter.preprocessor.encode_frame(rows)
    for name, column in split.candidates.features.items():
        np.testing.assert_array_equal(encoded[name], column.numpy(), err_msg=name)


def test_encode_frame_with_explicit_side_columns(ml, reference):
    split = ml.val
    users = reference.users.set_index("user_id")
    user_ids = np.repeat(split.user_ids[:30], 40)
    movie_ids = split.candidate_items[:30, :40].reshape(-1)
    index = torch.from_numpy(
        (np.arange(30)[:, None] * split.num_candidates + np.arange(40)).ravel()
    )
    rows = pd.DataFrame(
        {
            "user_id": user_ids,
            "movie_id": movie_ids,
            "gender": users.loc[user_ids, "g"].to_numpy(),
            "age": users.loc[user_ids, "age"].to_numpy(),
            "occupation": users.loc[user_ids, "o"].to_numpy(),
            "zip_code": users.loc[user_ids, "zip"].astype(str).to_numpy(),
            "genres": [reference.genres[int(i)] for i in movie_ids],
        }
    )
    encoded = ml.adapter.preprocessor.encode_frame(rows)
    for name, column in split.candidates.features.items():
        np.testing.assert_array_equal(encoded[name], column[index].numpy(), err_msg=name)


def test_encode_frame_side_columns_override_and_unknown_ids(ml):
    pre = ml.adapter.preprocessor
    # user 1 is a 24-year-old male technician; say instead a 60-year-old woman
    base = pre.encode_frame(pd.DataFrame({"user_id": [1], "movie_id": [1]}))
    given = pre.encode_frame(
        pd.DataFrame({"user_id": [1], "movie_id": [1], "gender": ["F"], "age": [60]})
    )
    enc = pre.encoders
    assert given["gender"][0] == enc["gender"].transform(["F"])[0] != base["gender"][0]
    assert given["age"][0] == enc["age"].transform(["56+"])[0] != base["age"][0]
    assert given["occupation"][0] == base["occupation"][0]
    # an unknown user and movie: ids and looked-up side features encode to 0
    unknown = pre.encode_frame(pd.DataFrame({"user_id": [99_999], "movie_id": [99_999]}))
    assert all((v == 0).all() for v in unknown.values())
    with pytest.raises(ValueError, match="movie_id"):
        pre.encode_frame(pd.DataFrame({"user_id": [1]}))
    with pytest.raises(ValueError, match="user_id"):
        pre.encode_frame(pd.DataFrame({"movie_id": [1]}))


# ------------------------------------------------------------------ registry and bad input


def test_registry():
    assert "movielens-100k" in available_adapters()
    adapter = get_adapter("movielens-100k", DATA_DIR, DataConfig(), FeatureConfig())
    assert isinstance(adapter, MovieLensAdapter)
    with pytest.raises(ValueError, match="movielens-100k"):
        get_adapter("movielens-10m", DATA_DIR, DataConfig(), FeatureConfig())


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        _build(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "https://grouplens.org/datasets/movielens/100k/" in message
    assert "u.data u.item u.user u.genre u.occupation" in message
    assert isinstance(info.value, ValueError)  # DataNotFoundError is both
    assert isinstance(info.value, DataNotFoundError)
    assert _listing(tmp_path) == []


def test_missing_file(tmp_path):
    data = tmp_path / "ml"
    shutil.copytree(DATA_DIR, data)
    (data / "u.user").unlink()
    before = _listing(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"u\.user.*grouplens"):
        _build(data)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize(
    ("file_name", "line_no", "replacement", "expected"),
    [
        ("u.data", 5, "1\t2\tthree\t881250949", r"u\.data, line 5: expected the rating"),
        ("u.data", 7, "1\t2\t3", r"u\.data, line 7: expected 4 fields"),
        (
            "u.data",
            9,
            "1\t99999\t3\t881250949",
            r"u\.data, line 9: movie_id 99999 is not in u\.item",
        ),
        ("u.user", 3, "3|23|M|astronaut|32067", r"u\.user, line 3: expected the occupation"),
        ("u.user", 2, "x|53|F|other|94043", r"u\.user, line 2: expected the user id"),
        ("u.item", 4, None, r"u\.item, line 4: expected the 'Action' flag to be one of \(0, 1\)"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, file_name, line_no, replacement, expected):
    data = tmp_path / "ml"
    shutil.copytree(DATA_DIR, data)
    path = data / file_name
    lines = path.read_text(encoding="latin-1").split("\n")
    if replacement is None:  # u.item: turn the Action flag (column 6) into a 2
        fields = lines[line_no - 1].split("|")
        fields[6] = "2"
        replacement = "|".join(fields)
    lines[line_no - 1] = replacement
    path.write_text("\n".join(lines), encoding="latin-1")
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=expected) as info:
        _build(data)
    assert str(path) in str(info.value)
    assert _listing(tmp_path) == before
