"""EpochRows: a training epoch as indices gives the batches the materialised rows gave.

The reference below is the materialised epoch as sample_epoch built it before
epochs became indices: every field of every row gathered into one column, the
history cut with history_matrix. On the real MovieLens-100K files the lazy rows
must give the same batches field for field, and a seeded training the very
losses and metrics recorded from that materialised pipeline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.config import DataConfig, FeatureConfig, HistoryConfig, load_config
from ctr.data import TabularDataset, get_adapter
from ctr.data.epoch import EpochRows
from ctr.data.history import HistoryWindows, history_matrix
from ctr.training import build_trainer
from ctr.training.batches import grouped_batches, row_batches

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ml-100k"
L = 20


_BUILDS: dict[bool, tuple] = {}


def _build(history: bool):
    """(adapter, schema, train set) of ml-100k with K = 4, built once per module run."""
    if history not in _BUILDS:
        adapter = get_adapter(
            "movielens-100k",
            DATA,
            DataConfig(num_negatives=4, num_eval_negatives=9),
            FeatureConfig(),
            history_config=HistoryConfig(enabled=history, length=L),
        )
        schema, train, _, _ = adapter.build()
        _BUILDS[history] = (adapter, schema, train)
    return _BUILDS[history]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "history"])
def built(request):
    yield _build(request.param)
    _BUILDS.pop(request.param, None)


def _train_histories(adapter) -> torch.Tensor:
    """(N, L) int64 history of each training positive, cut by history_matrix."""
    pre, ratings = adapter.preprocessor, adapter.ratings
    user_rows = pre.user_rows(ratings["user_id"].to_numpy())
    item_rows = pre.item_rows(ratings["movie_id"].to_numpy())
    codes = pre.catalogue_features()["movie_id"][item_rows]
    matrix = history_matrix(user_rows, codes, L)  # (R, L)
    return torch.from_numpy(matrix[ratings["split"].to_numpy() == "train"])


def _materialised_epoch(train, schema, adapter, epoch: int, seed: int) -> TabularDataset:
    """The epoch's N * (1 + K) rows, every field gathered (the former sample_epoch)."""
    n, k = train.num_positives, train.num_negatives
    context = {"history": _train_histories(adapter)} if "history" in schema.field_names else {}

    def per_row(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values, values.repeat_interleave(k, dim=0)])

    users = per_row(torch.from_numpy(train.user_rows))
    negatives = torch.from_numpy(train.negative_items(epoch, seed).reshape(-1))
    items = torch.cat([torch.from_numpy(train.item_rows), negatives])
    columns = {
        name: (
            per_row(context[name])
            if name in context
            else train.user_features[name].index_select(0, users)
            if name in train.user_features
            else train.item_features[name].index_select(0, items)
        )
        for name in schema.field_names
    }
    return TabularDataset(columns, torch.cat([torch.ones(n), torch.zeros(n * k)]))


def _assert_same_batch(got, expected) -> None:
    (features, labels), (want, want_labels) = got, expected
    assert list(features) == list(want)
    for name, column in want.items():
        assert features[name].dtype == column.dtype == torch.int64, name
        assert torch.equal(features[name], column), name
    assert labels.dtype == want_labels.dtype == torch.float32
    assert torch.equal(labels, want_labels)


def test_take_gives_the_materialised_rows_field_for_field(built):
    adapter, schema, train = built
    rows = train.sample_epoch(3, seed=11)
    assert isinstance(rows, EpochRows)
    reference = _materialised_epoch(train, schema, adapter, 3, seed=11)
    n = train.num_positives
    assert len(rows) == len(reference) == n * (1 + train.num_negatives)
    generator = torch.Generator().manual_seed(0)
    edges = torch.tensor([0, n - 1, n, n + 1, len(rows) - 1])  # around the positives' end
    for index in (edges, *torch.randint(len(rows), (4, 2048), generator=generator)):
        _assert_same_batch(rows.take(index), reference.take(index))
    _assert_same_batch(rows.take(torch.arange(len(rows))), reference.take(torch.arange(len(rows))))
    # what tools read whole: the materialised columns and labels, and the positives
    whole = rows.materialise()
    assert list(whole.features) == list(reference.features)
    assert all(torch.equal(whole.features[f], reference.features[f]) for f in reference.features)
    assert torch.equal(rows.labels, reference.labels)
    positives = train.positives
    for name, column in positives.features.items():
        assert torch.equal(column, reference.features[name][:n]), name


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_batches_are_those_of_the_materialised_rows(built, loss):
    """row_batches / grouped_batches yield the same batches from either form of the epoch."""
    adapter, schema, train = built
    rows = train.sample_epoch(2, seed=5)
    reference = _materialised_epoch(train, schema, adapter, 2, seed=5)
    weights = train.recency_weights(half_life=4.0, floor=0.1)
    cpu = torch.device("cpu")

    def batches(epoch_rows):
        generator = torch.Generator().manual_seed(7)
        if loss == "bce":
            row_weights = train.row_weights(weights)
            return row_batches(epoch_rows, generator, 4096, row_weights, cpu)
        return grouped_batches(train, epoch_rows, generator, 4096, weights, cpu)

    count = 0
    for got, want in zip(batches(rows), batches(reference), strict=True):
        _assert_same_batch(got[:2], want[:2])
        assert torch.equal(got[2], want[2]) and got[3] == want[3]
        count += 1
    groups_per_batch = 4096 // (1 + train.num_negatives)
    n = train.num_positives
    assert count == (-(-len(rows) // 4096) if loss == "bce" else -(-n // groups_per_batch))


def test_shuffled_indices_follow_the_generator_as_tabular_rows_do(built):
    _, _, train = built
    rows = train.sample_epoch(1, seed=1)
    stand_in = TabularDataset({"row": torch.arange(len(rows))})  # a dataset of as many rows
    for drop_last in (False, True):
        a = rows.shuffled_batch_indices(1000, torch.Generator().manual_seed(3), drop_last)
        b = stand_in.shuffled_batch_indices(1000, torch.Generator().manual_seed(3), drop_last)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert rows.num_batches(1000) == stand_in.num_batches(1000)
    assert rows.num_batches(1000, drop_last=True) == stand_in.num_batches(1000, drop_last=True)


def test_history_windows_cut_the_rows_history_matrix_gives():
    adapter, _, train = _build(history=True)
    windows = train.tables.context["history"]
    assert isinstance(windows, HistoryWindows)
    expected = _train_histories(adapter).numpy()
    assert windows.shape == expected.shape
    np.testing.assert_array_equal(windows.numpy(), expected)
    np.testing.assert_array_equal(windows[[5, 0, 5]], expected[[5, 0, 5]])
    # stored compactly: an int32 code and a uint8 depth per rating (and L int32 zeros
    # before the codes), an int32 per positive
    assert windows.nbytes == 5 * len(adapter.ratings) + 4 * L + 4 * train.num_positives
    with pytest.raises(ValueError, match="expected a history length >= 1"):
        HistoryWindows.build(np.zeros(3), np.zeros(3), 0)


def test_windows_match_the_matrix_on_random_users_and_long_histories():
    rng = np.random.default_rng(0)
    user_rows = np.sort(rng.integers(0, 40, size=2_000))
    codes = rng.integers(0, 10**6, size=2_000)
    for length in (1, 7, 300):  # 300: past uint8 depths
        windows = HistoryWindows.build(user_rows, codes, length)
        np.testing.assert_array_equal(windows.numpy(), history_matrix(user_rows, codes, length))
        pick = rng.random(2_000) < 0.3
        np.testing.assert_array_equal(
            windows.select(pick).numpy(), history_matrix(user_rows, codes, length)[pick]
        )


# Recorded from the materialised pipeline (sample_epoch gathering every row) before
# epochs became indices: train_loss and val / test metrics must not move by one bit.
SMALL = [
    "features.embedding_dim=4", "fm.embed_dim=4", "dnn.hidden_units=[16]",
    "data.num_eval_negatives=99", "training.batch_size=4096",
    "training.full_ranking=false", "training.test_full_ranking=false",
    "training.eval_batch_size=131072", "training.num_threads=1",
]  # fmt: skip
RECORDED = {
    "bce_recency": (
        "configs/deepfm_movielens.yaml",
        ["training.num_epochs=2", "training.recency_half_life=8.0"],
        {
            "train_loss": [0.4992722052114981, 0.30532589665165655],
            "val_ndcg_at_10": [0.18052901860993328, 0.22714749805527437],
            "val_auc": [0.6261229328559177, 0.7934076105145176],
            "val_logloss": [0.13885421050928304, 0.13088373473602405],
            "test_ndcg_at_10": 0.1646436505216144,
            "test_hr_at_10": 0.30858960763520676,
            "test_auc": 0.7519135969131415,
        },
    ),
    "softmax_history": (
        "configs/deepfm_history_movielens.yaml",
        ["training.num_epochs=1", "history.length=5", "history.attention_hidden_units=[8]"],
        {
            "train_loss": [1.4956907908121744],
            "val_ndcg_at_10": [0.19480874682931287],
            "val_auc": [0.6263786701594335],
            "val_logloss": [0.9433985702435556],
            "test_ndcg_at_10": 0.14614484042143916,
            "test_hr_at_10": 0.29056203605514314,
            "test_auc": 0.5947994125698008,
        },
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RECORDED))
def test_seeded_training_gives_the_recorded_losses_and_metrics(case):
    path, overrides, expected = RECORDED[case]
    config = load_config(ROOT / path, [*SMALL, *overrides])
    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer, _ = build_trainer(config, None, Path(tmp) / "run")
            summary = trainer.fit()
    finally:
        torch.set_num_threads(threads)  # the config's one thread is for the recording
    for key, values in expected.items():
        if key.startswith("test_"):
            assert summary[key] == values, key
        else:
            assert [h[key] for h in trainer.history] == values, key


def test_an_epoch_at_scale_holds_four_bytes_per_negative():
    """synthetic-500000 (493k positives, K = 4): the epoch keeps its sampled items alone,
    and what epochs share is a few bytes per positive beside the small tables."""
    adapter = get_adapter(
        "synthetic-500000",
        None,
        DataConfig(num_eval_negatives=9),
        FeatureConfig(),
        history_config=HistoryConfig(enabled=True, length=L),
    )
    schema, train, _, _ = adapter.build()
    n, k = train.num_positives, train.num_negatives
    rows = train.sample_epoch(1, seed=0)
    assert len(rows) == n * (1 + k) > 2_000_000
    assert rows.nbytes == 4 * n * k  # 3.2 bytes a row; materialised: 228 (68 without history)
    tables = train.tables
    feature_tables = sum(
        t.numel() * t.element_size()
        for t in [*tables.user_features.values(), *tables.item_features.values()]
    )
    # user and item row (int32 each), the history's code, depth and row: 17 bytes a positive
    assert tables.nbytes - feature_tables <= 17 * len(adapter.ratings)
    batch, labels = rows.take(torch.tensor([0, n - 1, n, len(rows) - 1]))
    assert list(batch) == schema.field_names and batch["history"].shape == (4, L)
    assert labels.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.equal(batch["user_id"][2], batch["user_id"][0])  # positive 0's first negative
    assert rows.nbytes == 4 * n * k  # nothing was materialised on the way
