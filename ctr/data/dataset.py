"""Columnar datasets: one tensor per field, batches are slices of a permuted index.

`TabularDataset` supports `ds[i]` (so a torch DataLoader works), but training
and evaluation go through `iter_batches`, which gathers whole batches from the
columnar tensors with one index per field: no per-row Python in the hot loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def _to_tensor(name: str, values: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values)
    if t.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8, torch.int64):
        return t.to(torch.int64)
    if t.is_floating_point():
        return t.to(torch.float32)
    raise ValueError(f"field {name!r}: expected an integer or float array, got dtype {t.dtype}")


class TabularDataset(torch.utils.data.Dataset):
    """Columnar features + labels.

    Args:
        features: field name -> array of N rows; (N,) for sparse/dense fields,
            (N, max_length) for sequence fields.
        labels: (N,) array of 0/1 (or None for unlabelled data, scored only).

    Example:
        ds = TabularDataset({"user_id": np.array([1, 2])}, np.array([1, 0]))
        for batch, y in ds.iter_batches(1024, shuffle=True, generator=g): ...
    """

    def __init__(
        self,
        features: dict[str, np.ndarray | torch.Tensor],
        labels: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        if not features:
            raise ValueError("TabularDataset needs at least one feature column")
        self.features: Batch = {k: _to_tensor(k, v) for k, v in features.items()}
        lengths = {k: v.shape[0] for k, v in self.features.items()}
        n = next(iter(lengths.values()))
        if any(length != n for length in lengths.values()):
            raise ValueError(f"feature columns differ in length: {lengths}")
        if labels is None:
            labels = np.zeros(n, dtype=np.float32)
        self.labels = torch.as_tensor(labels).to(torch.float32)
        if self.labels.shape != (n,):
            raise ValueError(
                f"labels must have shape ({n},) to match the features, got {tuple(self.labels.shape)}"
            )
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[Batch, torch.Tensor]:
        return {k: v[i] for k, v in self.features.items()}, self.labels[i]

    def take(self, index: torch.Tensor | np.ndarray) -> tuple[Batch, torch.Tensor]:
        """Gather the rows at `index` as one batch: ({field: (b, ...)}, labels (b,))."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return {k: v.index_select(0, index) for k, v in self.features.items()}, self.labels[index]

    def to(self, device: str | torch.device) -> TabularDataset:
        """A dataset with the same rows on `device` (tensors already there are shared)."""
        return TabularDataset(
            {k: v.to(device) for k, v in self.features.items()}, self.labels.to(device)
        )

    def subset(self, index: torch.Tensor | np.ndarray) -> TabularDataset:
        batch, labels = self.take(index)
        return TabularDataset(batch, labels)

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Yield (features, labels) batches covering every row once.

        With shuffle, rows are visited in a permutation drawn from `generator`;
        without it, contiguous slices are returned (no copy).
        """
        if shuffle:
            for index in self.shuffled_batch_indices(batch_size, generator, drop_last):
                yield self.take(index)
            return
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self._n
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            yield (
                {k: v[start:end] for k, v in self.features.items()},
                self.labels[start:end],
            )

    def shuffled_batch_indices(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the (B,) row indices of each batch of one permutation drawn from `generator`.

        `iter_batches(shuffle=True)` gathers these batches; callers that carry
        per-row values beside the features (e.g. loss weights) index them alike.
        The permutation is drawn on the CPU (the same order on every device) and
        moved to `device` once, so each batch's indices are already there.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self._n
        stop = n - n % batch_size if drop_last else n
        order = torch.randperm(n, generator=generator)
        if device is not None:
            order = order.to(device)
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return self._n // batch_size if drop_last else -(-self._n // batch_size)


def concat_datasets(parts: list[TabularDataset]) -> TabularDataset:
    keys = list(parts[0].features)
    return TabularDataset(
        {k: torch.cat([p.features[k] for p in parts]) for k in keys},
        torch.cat([p.labels for p in parts]),
    )


@dataclass
class EvalSplit:
    """A validation or test split, ready for ranking evaluation.

    Sampled ranking: `candidates` holds U * C rows in user-major order; row
    u * C is user u's held-out positive (label 1), rows u * C + 1 ... are its
    C - 1 sampled negatives (label 0). The same rows for every run of every model.

    Full ranking: every user is scored against the whole catalogue. A batch for
    user u and all items is `user_features[u]` broadcast beside `item_features`.

    Attributes:
        name: "val" or "test".
        candidates: TabularDataset of U * C rows as above.
        num_candidates: C (1 + number of sampled negatives).
        user_ids: (U,) raw user ids, in the order of the candidate blocks.
        candidate_items: (U, C) raw item ids of the candidates (column 0 = positive).
        user_features: field -> (U, ...) encoded user-side columns.
        item_features: field -> (I, ...) encoded item-side columns for the catalogue.
        item_ids: (I,) raw item ids of the catalogue rows.
        positive_item_index: (U,) row in the catalogue of each user's positive.
        exclude_indptr, exclude_items: CSR lists of catalogue rows to skip per user
            in full ranking (the user's other known interactions, any split).
        strictly_later: (U,) bool, the held-out interaction is strictly later than the
            user's previous one (not tied to the second and ordered by item id); the
            evaluation reports these users separately (`{name}_later_*`). None where
            the data has no timestamps.
    """

    name: str
    candidates: TabularDataset
    num_candidates: int
    user_ids: np.ndarray
    candidate_items: np.ndarray
    user_features: dict[str, torch.Tensor]
    item_features: dict[str, torch.Tensor]
    item_ids: np.ndarray
    positive_item_index: np.ndarray
    exclude_indptr: np.ndarray
    exclude_items: np.ndarray
    strictly_later: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of evaluation rows: users x candidates (U * C)."""
        return len(self.candidates)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def excluded_for(self, u: int) -> np.ndarray:
        return self.exclude_items[self.exclude_indptr[u] : self.exclude_indptr[u + 1]]
