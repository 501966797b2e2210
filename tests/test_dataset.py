"""Columnar datasets: indexing, DataLoader batching, whole-batch iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctr.data.dataset import TabularDataset, concat_datasets


def _dataset(n: int = 10) -> TabularDataset:
    return TabularDataset(
        {
            "user": np.arange(n, dtype=np.int32),  # ints widen to int64
            "price": np.linspace(0.0, 1.0, n),  # floats narrow to float32
            "tags": np.arange(n * 3).reshape(n, 3),
        },
        np.arange(n) % 2,
    )


def test_len_indexing_and_dtypes():
    ds = _dataset()
    assert len(ds) == 10
    assert ds.features["user"].dtype == torch.int64
    assert ds.features["price"].dtype == torch.float32
    assert ds.labels.dtype == torch.float32
    row, label = ds[3]
    assert int(row["user"]) == 3
    assert row["tags"].tolist() == [9, 10, 11]
    assert float(label) == 1.0
    batch, labels = ds.take(np.array([4, 0]))
    assert batch["user"].tolist() == [4, 0]
    assert batch["tags"].shape == (2, 3)
    assert labels.tolist() == [0.0, 0.0]
    sub = ds.subset(torch.tensor([1, 2]))
    assert len(sub) == 2 and sub.features["user"].tolist() == [1, 2]


def test_to_device_returns_a_dataset_with_the_same_rows():
    ds = _dataset()
    moved = ds.to("cpu")
    assert isinstance(moved, TabularDataset) and moved is not ds
    assert len(moved) == len(ds)
    assert moved.features.keys() == ds.features.keys()
    for name, column in ds.features.items():
        assert moved.features[name].device == torch.device("cpu")
        assert torch.equal(moved.features[name], column), name
    assert torch.equal(moved.labels, ds.labels)
    # a device without data of its own: the shapes, dtypes and length still travel
    meta = ds.to(torch.device("meta"))
    assert len(meta) == len(ds)
    assert meta.labels.device.type == "meta" and meta.labels.dtype == torch.float32
    for name, column in ds.features.items():
        assert meta.features[name].device.type == "meta", name
        assert meta.features[name].shape == column.shape
        assert meta.features[name].dtype == column.dtype
    assert ds.features["user"].device == torch.device("cpu")  # the original stays put


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_and_back_keeps_every_value():
    ds = _dataset()
    on_gpu = ds.to("cuda")
    assert on_gpu.labels.device.type == "cuda" and len(on_gpu) == len(ds)
    back = on_gpu.to("cpu")
    for name, column in ds.features.items():
        assert on_gpu.features[name].device.type == "cuda", name
        assert torch.equal(back.features[name], column), name
    assert torch.equal(back.labels, ds.labels)


def test_unlabelled_and_invalid_inputs():
    ds = TabularDataset({"a": np.arange(3)})
    assert ds.labels.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        TabularDataset({"a": np.arange(3), "b": np.arange(4)})
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        TabularDataset({"a": np.arange(3)}, np.arange(4))
    with pytest.raises(ValueError, match="at least one feature"):
        TabularDataset({})
    with pytest.raises(ValueError, match="'a'.*dtype"):
        TabularDataset({"a": torch.zeros(3, dtype=torch.bool)})


def test_dataloader_batches_rows():
    ds = _dataset(10)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    features, labels = batches[1]
    assert features["user"].tolist() == [4, 5, 6, 7]
    assert features["tags"].shape == (4, 3)
    assert labels.tolist() == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_iter_batches_covers_every_row_once(shuffle, batch_size):
    n = 23
    ds = _dataset(n)
    generator = torch.Generator().manual_seed(0)
    seen = []
    for features, labels in ds.iter_batches(batch_size, shuffle=shuffle, generator=generator):
        assert len(labels) <= batch_size
        # each row stays aligned across fields and labels
        users = features["user"]
        assert torch.equal(features["tags"][:, 0], users * 3)
        assert torch.equal(labels, (users % 2).float())
        seen.extend(users.tolist())
    assert sorted(seen) == list(range(n))
    assert len(seen) == n
    if not shuffle:
        assert seen == list(range(n))
    assert ds.num_batches(batch_size) == -(-n // batch_size)


def test_iter_batches_shuffle_is_seeded_and_drop_last():
    ds = _dataset(50)

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return [
            u for f, _ in ds.iter_batches(8, shuffle=True, generator=g) for u in f["user"].tolist()
        ]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != list(range(50))
    batches = list(ds.iter_batches(8, drop_last=True))
    assert [len(labels) for _, labels in batches] == [8] * 6
    assert ds.num_batches(8, drop_last=True) == 6
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(ds.iter_batches(0))


def test_concat_datasets():
    a, b = _dataset(3), _dataset(2)
    both = concat_datasets([a, b])
    assert len(both) == 5
    assert both.features["user"].tolist() == [0, 1, 2, 0, 1]
    assert both.features["tags"].shape == (5, 3)
