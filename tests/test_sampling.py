"""NegativeSamplingTrainSet's epoch row layout: row_weights and group_rows against loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.config import DataConfig, FeatureConfig
from ctr.data import MovieLensAdapter, NegativeSamplingTrainSet, TabularDataset

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "ml-100k"


def _small_train_set(num_negatives: int = 3) -> NegativeSamplingTrainSet:
    """3 users, 8 items, 5 positives; every field's values differ, so rows can be told apart."""
    user_features = {"user_id": torch.tensor([11, 12, 13]), "gender": torch.tensor([1, 2, 1])}
    item_features = {
        "movie_id": torch.arange(101, 109),
        "genres": torch.arange(16).view(8, 2),  # (I, 2)
    }
    user_rows = np.array([0, 0, 1, 2, 2])
    item_rows = np.array([1, 4, 0, 7, 3])
    mask = np.zeros((3, 8), dtype=bool)
    mask[user_rows, item_rows] = True
    users, items = torch.from_numpy(user_rows), torch.from_numpy(item_rows)
    positives = TabularDataset(
        {
            "user_id": user_features["user_id"][users],
            "movie_id": item_features["movie_id"][items],
            "gender": user_features["gender"][users],
            "genres": item_features["genres"][items],
        },
        torch.ones(5),
    )
    return NegativeSamplingTrainSet(
        positives, user_rows, item_rows, user_features, item_features, mask, num_negatives
    )


def test_group_rows_hold_each_positive_and_its_own_negatives():
    train = _small_train_set()
    n, k = train.num_positives, train.num_negatives
    rows = train.sample_epoch(2, seed=7)
    negatives = train.negative_items(2, seed=7)  # (N, K) catalogue rows
    order = torch.tensor([3, 0, 4, 1, 2])
    groups = train.group_rows(order)
    assert groups.shape == (n, 1 + k)
    assert groups.dtype == torch.int64
    for g, i in enumerate(order.tolist()):
        pos_row = int(groups[g, 0])
        assert float(rows.labels[pos_row]) == 1.0
        for name, column in train.positives.features.items():
            assert torch.equal(rows.features[name][pos_row], column[i]), (i, name)
        for j in range(k):
            row = int(groups[g, 1 + j])
            assert float(rows.labels[row]) == 0.0
            for name, table in train.user_features.items():
                assert torch.equal(rows.features[name][row], table[train.user_rows[i]])
            for name, table in train.item_features.items():
                assert torch.equal(rows.features[name][row], table[negatives[i, j]])
    # the groups of all positives cover every row of the epoch exactly once
    assert sorted(groups.reshape(-1).tolist()) == list(range(len(rows)))
    assert train.group_rows(torch.tensor([2, 0])).tolist() == [
        [2, n + 2 * k, n + 2 * k + 1, n + 2 * k + 2],
        [0, n, n + 1, n + 2],
    ]
    assert train.group_rows(torch.tensor([], dtype=torch.int64)).shape == (0, 1 + k)


def test_row_weights_give_every_row_its_positives_weight():
    train = _small_train_set(num_negatives=2)
    n, k = train.num_positives, train.num_negatives
    w = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])
    weights = train.row_weights(w)
    # the documented layout, row by row: the N positives, then K negatives per positive
    expected = [float(w[i]) for i in range(n)]
    for i in range(n):
        for _ in range(k):
            expected.append(float(w[i]))
    assert weights.tolist() == expected
    assert len(weights) == len(train) == len(train.sample_epoch(1, seed=3))
    # and a group's rows (found from the sampled rows above) all weigh what its positive does
    for i in range(n):
        assert torch.equal(weights[train.group_rows(torch.tensor([i]))[0]], w[i].expand(1 + k))


def test_layout_methods_reject_wrong_shapes_and_out_of_range_positives():
    train = _small_train_set()
    with pytest.raises(ValueError, match=r"expected one weight per positive, shape \(5,\), got"):
        train.row_weights(torch.ones(4))
    with pytest.raises(ValueError, match=r"expected positives in \[0, 5\), got values from 0 to 5"):
        train.group_rows(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"expected positives in \[0, 5\)"):
        train.group_rows(torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"expected a \(G,\) tensor of positives, got shape"):
        train.group_rows(torch.zeros(2, 2, dtype=torch.int64))


def test_real_training_set_groups_and_weights():
    """On ml-100k: each group's negatives are the positive's user's, with its recency weight."""
    adapter = MovieLensAdapter(DATA_DIR, DataConfig(num_negatives=2), FeatureConfig())
    _, train, _, _ = adapter.build()
    n, k = train.num_positives, train.num_negatives
    rows = train.sample_epoch(1, seed=42)
    groups = train.group_rows(torch.arange(n))  # (N, 1 + K)
    labels = rows.labels[groups]  # (N, 1 + K)
    assert torch.equal(labels[:, 0], torch.ones(n))
    assert torch.equal(labels[:, 1:], torch.zeros(n, k))
    users = rows.features["user_id"][groups]  # (N, 1 + K)
    assert torch.equal(users, users[:, :1].expand(n, 1 + k))
    movies = rows.features["movie_id"][groups[:, 1:]]  # (N, K)
    catalogue = adapter.preprocessor.catalogue_features()["movie_id"]
    np.testing.assert_array_equal(movies.numpy(), catalogue[train.negative_items(1, seed=42)])
    w = train.recency_weights(half_life=4.0, floor=0.1)
    weights = train.row_weights(w)[groups]  # (N, 1 + K)
    assert torch.equal(weights, w.unsqueeze(1).expand(n, 1 + k))
