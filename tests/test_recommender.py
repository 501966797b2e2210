"""The recommender (ctr.serving): raw-id scores and top-K, request checks, save / load.

An untrained tiny DeepFM on the real ml-100k encoders, tables and training split;
no MLflow (tests/test_serving.py covers the pyfunc wrapper around it).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import FAST_OVERRIDES, ROOT

UNKNOWN_USER = 99_999
UNKNOWN_MOVIE = 99_999


# --------------------------------------------------------------------- helpers
def brute_force_top_k(
    score, item_ids: np.ndarray, seen: set[int], user_id: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Score every (user, item) pair in scores mode, drop `seen`, sort by (-score, id)."""
    frame = pd.DataFrame({"user_id": np.full(len(item_ids), user_id), "movie_id": item_ids})
    scores = score(frame)["score"].to_numpy()
    keep = ~np.isin(item_ids, sorted(seen))
    ids, kept = item_ids[keep], scores[keep]
    order = np.lexsort((ids, -kept))[:k]
    return ids[order], kept[order]


def seen_items(train: pd.DataFrame, user_id: int) -> set[int]:
    return set(train.loc[train["user_id"] == user_id, "movie_id"].tolist())


def check_top_k_against_brute_force(predict, item_ids, train, users, k) -> None:
    top = predict(pd.DataFrame({"user_id": users, "k": [k] * len(users)}))
    assert list(top.columns) == ["user_id", "rank", "movie_id", "title", "score"]
    for user in users:
        mine = top[top["user_id"] == user]
        assert mine["rank"].tolist() == list(range(1, k + 1))
        ids, scores = brute_force_top_k(predict, item_ids, seen_items(train, user), user, k)
        np.testing.assert_allclose(mine["score"].to_numpy(), scores, rtol=0, atol=1e-6)
        assert mine["movie_id"].tolist() == ids.tolist(), user


def tiny_recommender() -> SimpleNamespace:
    """An untrained tiny DeepFM with the real encoders, tables and training split."""
    from ctr.config import load_config
    from ctr.models import create_model
    from ctr.serving import Recommender
    from ctr.training import build_data

    config = load_config(ROOT / "configs" / "deepfm_movielens.yaml", FAST_OVERRIDES)
    adapter, schema, *_ = build_data(config)
    torch.manual_seed(0)
    model = create_model(config.model_name, schema, config).eval()
    train = adapter.train_interactions[["user_id", "movie_id"]]
    recommender = Recommender(model, adapter.preprocessor, train)
    return SimpleNamespace(
        config=config,
        adapter=adapter,
        model=model,
        pre=adapter.preprocessor,
        train=train,
        rec=recommender,
        item_ids=adapter.preprocessor.item_ids,
    )


@pytest.fixture(scope="module")
def tiny() -> SimpleNamespace:
    return tiny_recommender()


# ---------------------------------------------------------------------- tests
def test_the_serving_package_imports_without_mlflow():
    script = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # any `import mlflow` now raises ImportError\n"
        "import ctr.serving\n"
        "from ctr.serving import Recommender, ServingInputError, format_recommendations\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow' and sys.modules[m]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_scores_equal_the_model_on_encoded_rows_unknown_ids_included(tiny):
    never_trained = tiny.item_ids[tiny.pre.catalogue_features()["movie_id"] == 0]
    assert len(never_trained) == 5  # in the catalogue, never in a training row
    rows = pd.DataFrame(
        {
            "user_id": [196, 196, 1, UNKNOWN_USER, 196, 1],
            "movie_id": [242, 302, 50, 50, UNKNOWN_MOVIE, never_trained[0]],
        }
    )
    batch = {k: torch.as_tensor(v) for k, v in tiny.pre.encode_frame(rows).items()}
    expected = tiny.model.predict(batch).squeeze(1).numpy()
    got = tiny.rec.predict(rows)
    assert list(got.columns) == ["score"] and len(got) == len(rows)
    np.testing.assert_allclose(got["score"].to_numpy(), expected, rtol=0, atol=1e-7)
    assert np.isfinite(got["score"]).all() and ((got["score"] > 0) & (got["score"] < 1)).all()
    assert batch["user_id"][3] == 0 and batch["movie_id"][4] == 0  # the OOV index


def test_top_k_equals_a_brute_force_sort_and_skips_training_items(tiny):
    check_top_k_against_brute_force(tiny.rec.predict, tiny.item_ids, tiny.train, [196, 1], 10)
    # an unknown user has no training items: all of the catalogue is rankable
    unknown = tiny.rec.predict(pd.DataFrame({"user_id": [UNKNOWN_USER], "k": [5]}))
    ids, _ = brute_force_top_k(tiny.rec.predict, tiny.item_ids, set(), UNKNOWN_USER, 5)
    assert unknown["movie_id"].tolist() == ids.tolist()


def test_a_request_spanning_several_catalogue_chunks_answers_like_one_user_at_a_time(tiny):
    chunk = tiny.rec.catalogue.chunk_users
    assert chunk * len(tiny.item_ids) <= 65_536 < (chunk + 1) * len(tiny.item_ids)
    users = [*range(1, 2 * chunk + 6), UNKNOWN_USER]  # three chunks, the last one short
    k = [3 + u % 4 for u in range(len(users))]
    together = tiny.rec.predict(pd.DataFrame({"user_id": users, "k": k}))
    alone = pd.concat(
        [
            tiny.rec.predict(pd.DataFrame({"user_id": [u], "k": [n]}))
            for u, n in zip(users, k, strict=True)
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(together, alone)


def test_exclude_seen_removes_exactly_the_training_items(tiny):
    everything = len(tiny.item_ids)
    seen = seen_items(tiny.train, 196)
    request = pd.DataFrame({"user_id": [196, 196], "k": [everything] * 2})
    request["exclude_seen"] = [True, False]
    top = tiny.rec.predict(request)
    excluded = top[: everything - len(seen)]
    assert set(excluded["movie_id"]) == set(tiny.item_ids) - seen
    assert excluded["user_id"].eq(196).all()
    assert len(top) == 2 * everything - len(seen)  # k beyond what is left: what is left
    # held-out (val / test) items are not "seen": they stay recommendable
    held_out = tiny.adapter.split_interactions("test")
    test_item = int(held_out.loc[held_out["user_id"] == 196, "movie_id"].iloc[0])
    assert test_item not in seen and test_item in set(excluded["movie_id"])
    scores = excluded["score"].to_numpy()
    assert (np.diff(scores) <= 0).all()


def test_side_features_are_used_for_unknown_ids_only(tiny):
    base = pd.DataFrame({"user_id": [196, UNKNOWN_USER], "movie_id": [242, 242]})
    side = base.assign(gender=["F", "F"], age=[23, 23], occupation=["artist"] * 2)
    side["zip_code"] = ["02139", "02139"]
    plain, with_side = tiny.rec.predict(base)["score"], tiny.rec.predict(side)["score"]
    assert with_side[0] == plain[0]  # known user: the bundled table wins
    assert with_side[1] != plain[1]  # unknown user: the caller's side features count
    expected_fields = tiny.pre.encode_frame(side.iloc[[1]])
    batch = {k: torch.as_tensor(v) for k, v in expected_fields.items()}
    assert with_side[1] == pytest.approx(float(tiny.model.predict(batch)), abs=1e-7)
    # genres for an unknown movie: a list or "A|B" alike
    movie = pd.DataFrame({"user_id": [196, 196], "movie_id": [UNKNOWN_MOVIE] * 2})
    movie["genres"] = [["Comedy", "Drama"], "Comedy|Drama"]
    genres_scores = tiny.rec.predict(movie)["score"]
    no_genres = tiny.rec.predict(movie.drop(columns="genres"))["score"]
    assert genres_scores[0] == genres_scores[1] != no_genres[0]
    # top-K for an unknown user with side features
    top = tiny.rec.predict(pd.DataFrame({"user_id": [UNKNOWN_USER], "k": [3], "gender": ["F"]}))
    assert len(top) == 3


@pytest.mark.parametrize(
    ("frame", "names"),
    [
        (pd.DataFrame({"movie_id": [1]}), "'user_id'"),
        (pd.DataFrame({"user_id": [1]}), "'movie_id'"),
        (pd.DataFrame({"user_id": ["abc"], "movie_id": [1]}), "'user_id'"),
        (pd.DataFrame({"user_id": [1.5], "movie_id": [1]}), "'user_id'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [None]}), "'movie_id'"),
        (pd.DataFrame({"user_id": [1], "k": [0]}), "'k'"),
        (pd.DataFrame({"user_id": [1], "k": ["ten"]}), "'k'"),
        (pd.DataFrame({"user_id": [1], "k": [3], "exclude_seen": ["no"]}), "'exclude_seen'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [1], "k": [3]}), "'movie_id'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [1], "age": ["old"]}), "'age'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [1], "genres": [3]}), "'genres'"),
    ],
)
def test_bad_requests_raise_an_error_naming_the_column(tiny, frame, names):
    from ctr.serving import ServingInputError

    with pytest.raises(ServingInputError, match=names):
        tiny.rec.predict(frame)


def test_saved_artifacts_load_back_to_the_same_answers(tiny, tmp_path):
    from ctr.serving import Recommender

    paths = tiny.rec.save(tmp_path)
    loaded = Recommender.load(paths)
    rows = pd.DataFrame({"user_id": [196, 1, UNKNOWN_USER], "movie_id": [242, 50, 1]})
    pd.testing.assert_frame_equal(loaded.predict(rows), tiny.rec.predict(rows))
    request = pd.DataFrame({"user_id": [196, 5], "k": [7, 7]})
    pd.testing.assert_frame_equal(loaded.predict(request), tiny.rec.predict(request))
    pd.testing.assert_frame_equal(loaded.train_items, tiny.rec.train_items)


def test_a_forward_pass_leaves_torchs_thread_setting_alone(tiny):
    before = torch.get_num_threads()
    tiny.rec.predict(pd.DataFrame({"user_id": [196], "k": [3]}))
    tiny.rec.predict(pd.DataFrame({"user_id": [196], "movie_id": [242]}))
    assert torch.get_num_threads() == before


def test_empty_requests_give_empty_frames(tiny):
    scores = tiny.rec.predict(pd.DataFrame({"user_id": [], "movie_id": []}, dtype="int64"))
    top = tiny.rec.predict(pd.DataFrame({"user_id": [], "k": []}, dtype="int64"))
    assert len(scores) == 0 and list(scores.columns) == ["score"]
    assert len(top) == 0 and list(top.columns) == ["user_id", "rank", "movie_id", "title", "score"]


def test_recommendations_print_as_a_table():
    from ctr.serving import format_recommendations

    table = pd.DataFrame(
        {
            "user_id": [196, 196],
            "rank": [1, 2],
            "movie_id": [50, 181],
            "title": ["Star Wars (1977)", "Return of the Jedi (1983)"],
            "score": [0.91234, 0.5],
        }
    )
    text = format_recommendations(table, 196, "models:/x@champion").splitlines()
    assert text[0] == "top 2 movies for user 196 (models:/x@champion):"
    assert text[2].split() == ["1", "0.9123", "50", "Star", "Wars", "(1977)"]
    assert format_recommendations(table.iloc[:0], 7, "here") == (
        "no movies left to recommend to user 7 (here)"
    )
