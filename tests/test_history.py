"""Behaviour history on the real MovieLens-100K files: what each row may see, and no leaks.

The rules are DESIGN.md's ("Behaviour history"). Each check below compares the
vectorised construction with a plain per-user reading of the sorted ratings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.config import DataConfig, FeatureConfig, HistoryConfig
from ctr.data import get_adapter
from ctr.data.history import history_matrix, strictly_later

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ml-100k"
L = 20


def _build(data_dir: Path = DATA, length: int = L):
    adapter = get_adapter(
        "movielens-100k",
        data_dir,
        DataConfig(num_eval_negatives=99),
        FeatureConfig(),
        history_config=HistoryConfig(enabled=True, length=length),
    )
    return adapter, *adapter.build()


@pytest.fixture(scope="module")
def built():
    return _build()


def test_history_matrix_left_pads_and_keeps_the_most_recent_last():
    got = history_matrix(np.array([0, 0, 0, 1, 1]), np.array([5, 6, 7, 8, 9]), 2)
    assert got.tolist() == [[0, 0], [0, 5], [5, 6], [0, 0], [0, 8]]
    with pytest.raises(ValueError, match="grouped by user"):
        history_matrix(np.array([0, 1, 0]), np.array([1, 2, 3]), 2)


def test_strictly_later_flags_ties_to_the_second():
    later = strictly_later(np.array([0, 0, 0, 1, 1]), np.array([10, 10, 11, 5, 5]))
    assert later.tolist() == [True, False, True, True, False]


def test_the_schema_has_a_history_field_sharing_movie_ids(built):
    _, schema, _, _, _ = built
    f = schema["history"]
    assert schema.field_names[-1] == "history"
    assert (f.max_length, f.shares, f.vocabulary_size) == (
        L,
        "movie_id",
        schema["movie_id"].vocabulary_size,
    )


def _sequences(adapter):
    """user row -> (encoded movie ids in split order, split labels): the plain reading."""
    ratings = adapter.ratings
    codes = adapter.preprocessor.encoders["movie_id"].transform(ratings["movie_id"].to_numpy())
    rows = adapter.preprocessor.user_rows(ratings["user_id"].to_numpy())
    out = {}
    for u in np.unique(rows):  # 943 users, a test: a loop is fine
        sel = rows == u
        out[int(u)] = (codes[sel], ratings["split"].to_numpy()[sel])
    return out


def _padded(items: np.ndarray, length: int) -> list[int]:
    items = list(items[-length:]) if length else []
    return [0] * (length - len(items)) + [int(i) for i in items]


def test_training_positives_see_only_earlier_training_items(built):
    adapter, _, train_ds, _, _ = built
    seqs = _sequences(adapter)
    history = train_ds.positives.features["history"].numpy()
    targets = train_ds.positives.features["movie_id"].numpy()
    expected, row = [], 0
    for u in sorted(seqs):  # the positives follow the sorted ratings: user, then time
        codes, split = seqs[u]
        train = codes[split == "train"]
        for t in range(len(train)):
            expected.append(_padded(train[:t], L))
            assert targets[row] == train[t]
            row += 1
    assert np.array_equal(history, np.array(expected))
    # no row's history holds its own target (ML-100K has no repeated ratings)
    assert not (history == targets[:, None]).any()


def test_evaluation_histories_end_before_the_held_out_item(built):
    adapter, _, _, val_ds, test_ds = built
    seqs = _sequences(adapter)
    rows = adapter.preprocessor.user_rows(val_ds.user_ids)
    for split, held_out_from_end in ((val_ds, 2), (test_ds, 1)):
        got = split.user_features["history"].numpy()
        for i, u in enumerate(rows):
            codes, _ = seqs[int(u)]
            assert got[i].tolist() == _padded(codes[:-held_out_from_end], L)
        positives = split.candidates.features["movie_id"].numpy()[:: split.num_candidates]
        # (an item unseen in training encodes to 0, like padding: only known ones count)
        assert not ((got == positives[:, None]) & (positives[:, None] > 0)).any()
        # every candidate of a user carries the user's history
        cand = split.candidates.features["history"].numpy().reshape(split.num_users, -1, L)
        assert (cand == got[:, None, :]).all()


def test_negatives_carry_their_positives_history(built):
    _, _, train_ds, _, _ = built
    rows = train_ds.sample_epoch(epoch=1, seed=7)
    n, k = train_ds.num_positives, train_ds.num_negatives
    history = rows.features["history"]
    groups = train_ds.group_rows(torch.arange(n))  # (N, 1 + K)
    assert torch.equal(history[groups], history[:n, None, :].expand(n, 1 + k, L))


def test_training_histories_do_not_change_when_held_out_items_do(built, tmp_path):
    """Replace every user's validation and test movie (kept last in time): training rows
    must be identical, features and histories alike."""
    adapter, _, train_ds, _, _ = built
    for name in os.listdir(DATA):
        if name != "u.data":
            (tmp_path / name).symlink_to(DATA / name)
    ratings = adapter.ratings.copy()
    held = ratings["split"].to_numpy() != "train"
    num_movies = int(adapter.item_ids.max())
    # another movie, shifted by a user-dependent amount; a (user, movie) repeat is harmless
    ratings.loc[held, "movie_id"] = (ratings.loc[held, "movie_id"] + 37) % num_movies + 1
    last = int(ratings["timestamp"].max())
    ratings.loc[ratings["split"] == "val", "timestamp"] = last + 1
    ratings.loc[ratings["split"] == "test", "timestamp"] = last + 2
    ratings[["user_id", "movie_id", "rating", "timestamp"]].to_csv(
        tmp_path / "u.data", sep="\t", header=False, index=False
    )
    _, _, changed, _, _ = _build(tmp_path)
    for field, values in train_ds.positives.features.items():
        assert torch.equal(changed.positives.features[field], values), field


def test_strictly_later_users_match_the_ratings(built):
    adapter, _, _, val_ds, test_ds = built
    r = adapter.ratings
    ts = {s: r[r["split"] == s].set_index("user_id")["timestamp"] for s in ("train", "val", "test")}
    users = test_ds.user_ids
    expected_test = ts["test"].loc[users].to_numpy() > ts["val"].loc[users].to_numpy()
    assert np.array_equal(test_ds.strictly_later, expected_test)
    last_train = r[r["split"] == "train"].groupby("user_id")["timestamp"].max()
    expected_val = ts["val"].loc[users].to_numpy() > last_train.loc[users].to_numpy()
    assert np.array_equal(val_ds.strictly_later, expected_val)
    assert 0.5 < test_ds.strictly_later.mean() < 0.6  # 44% of test items tie with validation


def test_no_history_field_without_the_config(built):
    adapter = get_adapter("movielens-100k", DATA, DataConfig(num_eval_negatives=9), FeatureConfig())
    schema, train_ds, val_ds, _ = adapter.build()
    assert "history" not in schema and "history" not in train_ds.sample_epoch(1, 1).features
    assert "history" not in val_ds.user_features
    assert val_ds.strictly_later is not None  # the tie subset is reported either way


def test_the_later_metrics_score_only_the_strictly_later_users(built):
    from ctr.training.metrics import compute_ndcg_at_k, evaluate_scores, rank_of_positive

    _, _, _, _, test_ds = built
    logits = torch.randn(
        test_ds.num_users, test_ds.num_candidates, generator=torch.Generator().manual_seed(0)
    )
    metrics = evaluate_scores(test_ds, logits)
    ranks = rank_of_positive(logits, positive_col=0).numpy()
    later = test_ds.strictly_later
    assert metrics["test_later_ndcg_at_10"] == compute_ndcg_at_k(ranks[later], 10)
    assert metrics["test_ndcg_at_10"] == compute_ndcg_at_k(ranks, 10)


def test_results_rows_include_the_history_configs():
    from experiments.results import ResultsError, config_rows, parse_models

    rows = config_rows()
    assert "deepfm" not in rows  # a model's own config is its model's row
    for row in rows:
        assert (ROOT / "configs" / f"{row}_movielens.yaml").is_file()
    assert parse_models(",".join(["fm", *rows])) == ["fm", *rows]
    with pytest.raises(ResultsError, match="unknown models"):
        parse_models("deepfm_histroy")


# ---------------------------------------------------------------- serving
@pytest.fixture(scope="module")
def served():
    """An untrained DeepFM with a DIN-pooled history of 8, served from the real tables."""
    from ctr.config import load_config
    from ctr.models import create_model
    from ctr.serving import Recommender
    from ctr.training import build_data

    config = load_config(
        ROOT / "configs" / "deepfm_history_movielens.yaml",
        ["history.length=8", "data.num_eval_negatives=9"],
    )
    adapter, schema, _, val_ds, _ = build_data(config)
    torch.manual_seed(0)
    model = create_model(config.model_name, schema, config).eval()
    train = adapter.train_interactions[["user_id", "movie_id"]]
    return adapter, val_ds, model, Recommender(model, adapter.preprocessor, train)


def _model_scores(model, pre, users, movies, history) -> np.ndarray:
    import pandas as pd

    encoded = pre.encode_frame(pd.DataFrame({"user_id": users, "movie_id": movies}))
    batch = {k: torch.from_numpy(v) for k, v in encoded.items()}
    batch["history"] = history
    with torch.no_grad():
        return torch.sigmoid(model(batch)).reshape(-1).numpy()


def test_a_known_user_is_served_with_its_latest_training_items(served):
    import pandas as pd

    adapter, val_ds, model, rec = served
    # a validation row's history is the user's whole training sequence: what serving sees
    users = val_ds.user_ids[:5]
    movies = np.array([50, 172, 181, 1, 2])
    got = rec.predict(pd.DataFrame({"user_id": users, "movie_id": movies}))["score"].to_numpy()
    history = val_ds.user_features["history"][:5]
    assert np.allclose(got, _model_scores(model, adapter.preprocessor, users, movies, history))
    # top-K scores are the scores of those movies
    top = rec.predict(pd.DataFrame({"user_id": [int(users[0])], "k": [5]}))
    again = rec.predict(pd.DataFrame({"user_id": users[0], "movie_id": top["movie_id"]}))
    assert np.allclose(top["score"].to_numpy(), again["score"].to_numpy(), atol=1e-6)


def test_an_unknown_user_may_send_a_history(served):
    import pandas as pd

    adapter, _, model, rec = served
    pre = adapter.preprocessor
    frame = pd.DataFrame(
        {"user_id": [99999, 99999, 99999], "movie_id": [50, 50, 50],
         "history": [[1, 2, 3], "1|2|3", None]}
    )  # fmt: skip
    got = rec.predict(frame)["score"].to_numpy()
    codes = pre.encoders["movie_id"].transform(np.array([1, 2, 3]))
    sent = torch.zeros(3, 8, dtype=torch.int64)
    sent[:2, -3:] = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    assert np.allclose(got, _model_scores(model, pre, [99999] * 3, [50] * 3, sent))
    assert got[0] == got[1] != got[2]  # a history changes the score; none is empty
    with pytest.raises(ValueError, match="history"):
        rec.predict(pd.DataFrame({"user_id": [99999], "movie_id": [50], "history": [[1.5, "x"]]}))


def test_a_history_recommender_saves_and_loads(served, tmp_path):
    import pandas as pd

    from ctr.serving import Recommender

    _, val_ds, _, rec = served
    loaded = Recommender.load(rec.save(tmp_path))
    frame = pd.DataFrame({"user_id": val_ds.user_ids[:3], "k": [4, 4, 4]})
    pd.testing.assert_frame_equal(loaded.predict(frame), rec.predict(frame))
