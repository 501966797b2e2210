"""The MovieLens-1M and -20M adapters on small files in each release's format.

The real archives are not here (and nothing downloads in tests): the files
are written by tests/movielens_fixtures.py. Each adapter must give the
protocol's invariants (DESIGN.md, "Data"), with the fields its data set has.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ctr.config import DataConfig, FeatureConfig
from ctr.data import (
    DataNotFoundError,
    MovieLens1MAdapter,
    MovieLens20MAdapter,
    MovieLensPreprocessor,
    available_adapters,
    get_adapter,
)
from ctr.data.movielens import read_ml1m, read_ml20m
from tests.movielens_fixtures import (
    NUM_MOVIES,
    NUM_USERS,
    TEST_ONLY_MOVIE,
    UNRATED_MOVIE,
    fixture_ratings,
    write_ml1m,
    write_ml20m,
)

NUM_EVAL_NEGATIVES = 9
ML1M_FIELDS = ["user_id", "movie_id", "gender", "age", "occupation", "zip_prefix", "genres"]
ML20M_FIELDS = ["user_id", "movie_id", "genres"]


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    logging.getLogger("ctr.data.movielens").setLevel(logging.ERROR)
    yield
    logging.getLogger("ctr.data.movielens").setLevel(logging.INFO)


def _build(cls, data_dir):
    config = DataConfig(num_negatives=3, num_eval_negatives=NUM_EVAL_NEGATIVES, eval_seed=5)
    adapter = cls(data_dir, config, FeatureConfig(max_genres=3))
    return (adapter, *adapter.build())


@pytest.fixture(scope="module", params=["movielens-1m", "movielens-20m"])
def built(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    if name == "movielens-1m":
        return name, _build(MovieLens1MAdapter, write_ml1m(root / "ml-1m"))
    return name, _build(MovieLens20MAdapter, write_ml20m(root / "ml-20m"))


def _pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_id"].tolist(), df["movie_id"].tolist(), strict=True))


def test_fields_are_those_of_the_data_set(built):
    name, (adapter, schema, train, val, _) = built
    fields = ML1M_FIELDS if name == "movielens-1m" else ML20M_FIELDS
    assert schema.field_names == fields
    assert list(train.positives.features) == fields
    assert list(val.candidates.features) == fields
    assert adapter.preprocessor.field_order == tuple(fields)
    assert [f for f in fields if schema[f].group == "user"] == [
        f for f in fields if f not in ("movie_id", "genres")
    ]


def test_split_is_leave_one_out_by_time_with_the_tie_rule(built):
    _, (adapter, *_rest) = built
    raw = fixture_ratings()
    train, val, test = (adapter.split_interactions(s) for s in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == len(raw)
    assert sorted(val["user_id"]) == sorted(test["user_id"]) == list(range(1, NUM_USERS + 1))
    for user, events in raw.groupby("user_id"):  # the reference: sort by (timestamp, movie id)
        ordered = events.sort_values(["timestamp", "movie_id"])["movie_id"].tolist()
        assert val.loc[val["user_id"] == user, "movie_id"].item() == ordered[-2]
        assert test.loc[test["user_id"] == user, "movie_id"].item() == ordered[-1]
        assert sorted(train.loc[train["user_id"] == user, "movie_id"]) == sorted(ordered[:-2])


def test_candidates_hold_the_positive_first_and_never_a_known_item(built):
    _, (adapter, _, _, val, test) = built
    known = _pairs(fixture_ratings())
    for split in (val, test):
        positives = adapter.split_interactions(split.name).set_index("user_id")["movie_id"]
        assert split.candidate_items.shape == (NUM_USERS, 1 + NUM_EVAL_NEGATIVES)
        assert len(split.candidates) == NUM_USERS * (1 + NUM_EVAL_NEGATIVES)
        labels = split.candidates.labels.numpy().reshape(NUM_USERS, -1)
        assert (labels[:, 0] == 1).all() and (labels[:, 1:] == 0).all()
        for user, items in zip(split.user_ids.tolist(), split.candidate_items, strict=True):
            assert items[0] == positives[user]
            negatives = items[1:].tolist()
            assert len(set(negatives)) == len(negatives)  # every pool here is large enough
            assert not any((user, m) in known for m in negatives)


def test_training_negatives_avoid_only_the_users_training_items(built):
    _, (adapter, _, train, _, _) = built
    train_pairs = _pairs(adapter.train_interactions)
    users = adapter.user_ids[train.user_rows]
    negatives = train.negative_item_ids(epoch=1, seed=42)  # (N, K)
    assert negatives.shape == (len(train_pairs), 3)
    pairs = {(u, m) for u, row in zip(users, negatives, strict=True) for m in row}
    assert not pairs & train_pairs
    # validation / test items are NOT excluded: a model must not learn what is held out
    held_out = _pairs(adapter.split_interactions("val")) | _pairs(
        adapter.split_interactions("test")
    )
    drawn = set()
    for epoch in range(1, 30):
        rows = train.negative_item_ids(epoch, seed=42)
        drawn |= {(u, m) for u, row in zip(users, rows, strict=True) for m in row}
    assert drawn & held_out
    epoch = train.sample_epoch(1, seed=42)
    assert len(epoch) == len(train_pairs) * 4


def test_encoders_are_fitted_on_training_rows_only(built):
    name, (adapter, schema, _, _, test) = built
    pre = adapter.preprocessor
    train = adapter.train_interactions
    assert pre.encoders["movie_id"].classes_ == sorted(set(train["movie_id"]))
    assert TEST_ONLY_MOVIE not in pre.encoders["movie_id"].classes_
    # user 1's test positive, a movie no training row has, encodes to 0 and is still ranked
    row = list(test.user_ids).index(1)
    assert test.candidate_items[row, 0] == TEST_ONLY_MOVIE
    assert int(test.candidates.features["movie_id"][row * (1 + NUM_EVAL_NEGATIVES)]) == 0
    # the catalogue is the whole movie file, rated or not
    assert adapter.item_ids.tolist() == list(range(1, NUM_MOVIES + 1))
    assert UNRATED_MOVIE in adapter.item_ids
    train_genres = {
        g for m in set(train["movie_id"]) for g in pre.items.set_index("movie_id").genres[m]
    }
    assert set(pre.encoders["genres"].tokens_) == train_genres
    assert schema["movie_id"].vocabulary_size == len(set(train["movie_id"])) + 1


def test_ml1m_user_features(tmp_path):
    raw = read_ml1m(write_ml1m(tmp_path / "ml-1m"))
    users = raw.users.set_index("user_id")
    lines = (tmp_path / "ml-1m" / "users.dat").read_text(encoding="latin-1").splitlines()
    uid, gender, age, occupation, zip_code = lines[0].split("::")
    assert users.loc[int(uid), "gender"] == gender
    assert users.loc[int(uid), "age"] == int(age)  # the bucket code, read as an age
    assert users.loc[int(uid), "zip_code"] == zip_code
    from ctr.data.movielens.raw_large import ML1M_OCCUPATIONS

    assert users.loc[int(uid), "occupation"] == ML1M_OCCUPATIONS[int(occupation)]
    titles = raw.items.set_index("movie_id")["title"]
    assert titles[1] == "Amélie (2001)"
    assert titles[2] == "Star Wars: Episode IV - A New Hope (1977)"
    pre = MovieLensPreprocessor.fit(raw.ratings, raw.users, raw.items, 3)
    assert set(pre.encoders["age"].classes_) <= {"<18", "18-24", "25-34", "35-44", "45-49",
                                                  "50-55", "56+"}  # fmt: skip


def test_ml20m_has_no_user_features_and_keeps_quoted_titles(tmp_path):
    raw = read_ml20m(write_ml20m(tmp_path / "ml-20m"))
    assert list(raw.users.columns) == ["user_id"]
    assert raw.items.set_index("movie_id")["title"][3] == "American President, The (1995)"
    assert raw.items.set_index("movie_id")["genres"][5] == []  # (no genres listed)
    assert set(raw.ratings["rating"]) & {0.5, 1.5, 2.5, 3.5, 4.5}  # half stars stay floats
    pre = MovieLensPreprocessor.fit(raw.ratings, raw.users, raw.items, 3)
    again = MovieLensPreprocessor.from_dict(pre.to_dict())
    assert again.field_order == ("user_id", "movie_id", "genres")
    rows = pd.DataFrame({"user_id": [1, 999], "movie_id": [2, 2], "gender": ["F", "M"]})
    encoded = again.encode_frame(rows)  # a user column the data set lacks is ignored
    assert list(encoded) == ["user_id", "movie_id", "genres"]
    assert encoded["user_id"][1] == 0
    with pytest.raises(ValueError, match="side column of this data set"):
        again.encode_side("gender", ["F"])


def test_registry_names_the_new_data_sets(tmp_path):
    names = available_adapters()
    assert {"movielens-100k", "movielens-1m", "movielens-20m", "synthetic"} <= set(names)
    assert "synthetic-<size>" in names
    adapter = get_adapter("movielens-20m", write_ml20m(tmp_path / "x"), DataConfig())
    assert isinstance(adapter, MovieLens20MAdapter)
    with pytest.raises(ValueError, match="unknown data set 'movielens-10m'.*movielens-1m"):
        get_adapter("movielens-10m")
    with pytest.raises(ValueError, match="gender"):  # ML-20M has no gender field
        MovieLens20MAdapter(
            tmp_path, DataConfig(), FeatureConfig(field_embedding_dims={"gender": 4})
        )


@pytest.mark.parametrize(
    ("writer", "cls", "file_name", "line_no", "replacement", "expected"),
    [
        (write_ml1m, MovieLens1MAdapter, "ratings.dat", 3, "1::2::x::978300000",
         r"ratings\.dat, line 3: expected the rating to be an integer"),
        (write_ml1m, MovieLens1MAdapter, "ratings.dat", 4, "1::2::3",
         r"ratings\.dat, line 4: expected 4 fields separated by '::'"),
        (write_ml1m, MovieLens1MAdapter, "users.dat", 2, "2::F::30::1::12345",
         r"users\.dat, line 2: expected the age code to be one of"),
        (write_ml20m, MovieLens20MAdapter, "ratings.csv", 5, "1,2,high,978300000",
         r"ratings\.csv, line 5: expected rating to be a number"),
        (write_ml20m, MovieLens20MAdapter, "ratings.csv", 6, "1,99999,3.0,978300000",
         r"ratings\.csv, line 6: movie_id 99999 is not in movies\.csv"),
        (write_ml20m, MovieLens20MAdapter, "movies.csv", 1, "id,title,genres",
         r"movies\.csv, line 1: expected the header 'movieId,title,genres'"),
    ],
)  # fmt: skip
def test_malformed_line_names_file_and_line(
    tmp_path, writer, cls, file_name, line_no, replacement, expected
):
    data_dir = writer(tmp_path / "data")
    path = data_dir / file_name
    lines = path.read_text(encoding="latin-1").split("\n")
    lines[line_no - 1] = replacement
    path.write_text("\n".join(lines), encoding="latin-1")
    with pytest.raises(ValueError, match=expected):
        _build(cls, data_dir)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"ctr data download movielens-1m.*ml-1m\.zip"):
        _build(MovieLens1MAdapter, tmp_path / "nowhere")
    ml100k_like = tmp_path / "ml-100k"  # the usual slip: data.data_dir left at another data set
    ml100k_like.mkdir()
    (ml100k_like / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataNotFoundError, match=r"ratings\.csv.*data\.data_dir=data/ml-20m"):
        _build(MovieLens20MAdapter, ml100k_like)


# ------------------------------------------------ the machinery that scales to ML-20M


def test_interaction_mask_answers_like_the_dense_matrix():
    from ctr.data.masks import InteractionMask

    rng = np.random.default_rng(0)
    dense = rng.random((7, 13)) < 0.3  # 13 items: the last byte of each row is padded
    users, items = np.nonzero(dense)
    mask = InteractionMask.from_pairs(np.r_[users, users[:3]], np.r_[items, items[:3]], (7, 13))
    np.testing.assert_array_equal(np.asarray(mask), dense)
    u, i = rng.integers(0, 7, 200), rng.integers(0, 13, 200)
    np.testing.assert_array_equal(mask[u, i], dense[u, i])
    np.testing.assert_array_equal(mask[np.array([4, 1, 4])], dense[[4, 1, 4]])
    np.testing.assert_array_equal(mask.row_counts(), dense.sum(axis=1))
    assert mask.nbytes == 7 * 2 and mask.shape == (7, 13)
    np.testing.assert_array_equal(np.asarray(InteractionMask.from_dense(dense)), dense)


@pytest.mark.parametrize("way", ["dense", "sparse"])
def test_eval_candidates_are_uniform_over_the_pool_both_ways(monkeypatch, way):
    import ctr.data.candidates as candidates

    if way == "sparse":
        monkeypatch.setattr(candidates, "DENSE_EVAL_MAX_CELLS", 0)
    known = np.zeros((3, 40), dtype=bool)
    known[0, :20] = True  # user row 0: a pool of 20 items (20..39)
    known[1, 3:] = True  # user row 1: a pool of 3 items, fewer than the 5 negatives
    user_rows = np.r_[np.zeros(4_000, dtype=np.int64), 1]
    positives = np.r_[np.zeros(4_000, dtype=np.int64), 5]
    cand, topped_up = candidates.sample_eval_candidates(
        positives, known, 5, np.random.default_rng(1), user_rows=user_rows
    )
    assert cand.shape == (4_001, 6)
    assert (cand[:, 0] == positives).all()
    assert topped_up.tolist() == [4_000]
    assert set(cand[-1, 1:].tolist()) == {0, 1, 2}  # the whole short pool, then repeats
    many = cand[:-1, 1:]
    assert ((many >= 20) & (many < 40)).all()  # never a known item
    assert (np.sort(many, axis=1)[:, 1:] != np.sort(many, axis=1)[:, :-1]).all()  # distinct
    counts = np.bincount(many.ravel(), minlength=40)[20:]  # 1,000 expected for each
    assert counts.min() > 850 and counts.max() < 1_150
    first = np.bincount(many[:, 0], minlength=40)[20:]  # the order is random too (200 each)
    assert first.min() > 120 and first.max() < 290


def test_dense_candidates_do_not_depend_on_the_row_blocks(monkeypatch):
    import ctr.data.candidates as candidates

    rng = np.random.default_rng(2)
    known = rng.random((50, 30)) < 0.4
    positives = rng.integers(0, 30, 50)
    whole, _ = candidates.sample_eval_candidates(positives, known, 12, np.random.default_rng(9))
    monkeypatch.setattr(candidates, "row_block", lambda num_items: 7)
    blocked, _ = candidates.sample_eval_candidates(positives, known, 12, np.random.default_rng(9))
    np.testing.assert_array_equal(whole, blocked)
