"""Columnar datasets: one tensor per field, batches are slices of a permuted index.

`TabularDataset` supports `ds[i]` (so a torch DataLoader works), but training
and evaluation go through `iter_batches`, which gathers whole batches from the
columnar tensors with one index per field: no per-row Python in the hot loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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


def batch_starts(n: int, batch_size: int, drop_last: bool = False) -> range:
    """The first row of each batch of `batch_size` over n rows (the last may be short,
    or left out with drop_last)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, n - n % batch_size if drop_last else n, batch_size)


def shuffled_batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: str | torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """The (B,) row indices of each batch of one permutation of n rows drawn from
    `generator`: drawn on the CPU (the same order on every device) and moved to
    `device` once, so each batch's indices are already there. Every row container
    (TabularDataset, ctr.data.epoch.EpochRows) batches through this one stream."""
    starts = batch_starts(n, batch_size, drop_last)
    order = torch.randperm(n, generator=generator)
    if device is not None:
        order = order.to(device)
    for start in starts:
        yield order[start : start + batch_size]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


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
        n = self._n
        for start in batch_starts(n, batch_size, drop_last):
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
        return shuffled_batch_indices(self._n, batch_size, generator, drop_last, device)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return num_batches(self._n, batch_size, drop_last)


def concat_datasets(parts: list[TabularDataset]) -> TabularDataset:
    keys = list(parts[0].features)
    return TabularDataset(
        {k: torch.cat([p.features[k] for p in parts]) for k in keys},
        torch.cat([p.labels for p in parts]),
    )


def gather_candidate_rows(
    user_table: Batch,
    item_table: Batch,
    candidate_rows: torch.Tensor,
    fields: Sequence[str],
    start: int,
    end: int,
) -> Batch:
    """Rows [start, end) of the U * C candidate layout, gathered from the two tables.

    Row u * C + j is user u beside catalogue row candidate_rows[u, j]: each field
    comes from `user_table` (U, ...) or `item_table` (I, ...), all on one device.

    Returns:
        field -> (end - start, ...) for each of `fields`, in that order.
    """
    C = candidate_rows.shape[1]
    device = candidate_rows.device
    items = candidate_rows.reshape(-1)[start:end].long()  # (b,) catalogue rows
    users = torch.arange(start, end, device=device) // C  # (b,) user of each row
    return {
        f: (
            user_table[f].index_select(0, users)
            if f in user_table
            else item_table[f].index_select(0, items)
        )
        for f in fields
    }


class EvalSplit:
    """A validation or test split, ready for ranking evaluation.

    Sampled ranking: user u is ranked among its C candidates, the catalogue rows
    `candidate_rows[u]` (column 0 the held-out positive, then C - 1 sampled
    negatives); the same for every run of every model. A candidate's features are
    its user's row of `user_features` beside its item's row of `item_features`:
    `candidate_batch(start, end)` gathers those of users [start, end), in the
    user-major layout where row u * C + j is (user u, candidate j). Labels follow
    from the layout: 1 for column 0, 0 elsewhere. No U * C feature rows are held;
    `candidates` materialises them (a TabularDataset) on first use, for small data.

    Full ranking: every user is scored against the whole catalogue. A batch for
    user u and all items is `user_features[u]` broadcast beside `item_features`.

    Attributes:
        name: "val" or "test".
        num_candidates: C (1 + number of sampled negatives).
        user_ids: (U,) raw user ids, in the order of the candidate blocks.
        candidate_rows: (U, C) int32 catalogue rows of the candidates (column 0 = positive).
        candidate_items: (U, C) raw item ids of the candidates, `item_ids[candidate_rows]`
            (computed on access).
        user_features: field -> (U, ...) encoded user-side columns (with `history`, the
            held-out rating's behaviour history, when the data has one).
        item_features: field -> (I, ...) encoded item-side columns for the catalogue.
        field_order: the fields of a candidate row, each in exactly one of the two tables.
        item_ids: (I,) raw item ids of the catalogue rows.
        positive_item_index: (U,) row in the catalogue of each user's positive.
        exclude_indptr, exclude_items: CSR lists of catalogue rows to skip per user
            in full ranking (the user's other known interactions, any split).
        strictly_later: (U,) bool, the held-out interaction is strictly later than the
            user's previous one (not tied to the second and ordered by item id); the
            evaluation reports these users separately (`{name}_later_*`). None where
            the data has no timestamps.

    Give the candidates as `candidate_rows` or as raw `candidate_items` (mapped to
    catalogue rows through `item_ids`), not both. `candidates` may also be given
    (already materialised rows, in `field_order`); evaluation still gathers from the
    tables, so they must be those rows.
    """

    def __init__(
        self,
        name: str,
        *,
        num_candidates: int,
        user_ids: np.ndarray,
        user_features: dict[str, torch.Tensor],
        item_features: dict[str, torch.Tensor],
        item_ids: np.ndarray,
        positive_item_index: np.ndarray,
        exclude_indptr: np.ndarray,
        exclude_items: np.ndarray,
        candidate_rows: np.ndarray | None = None,
        candidate_items: np.ndarray | None = None,
        field_order: Sequence[str] | None = None,
        strictly_later: np.ndarray | None = None,
        candidates: TabularDataset | None = None,
    ) -> None:
        self.name = name
        self.num_candidates = int(num_candidates)
        self.user_ids = user_ids
        self.user_features = user_features
        self.item_features = item_features
        self.item_ids = item_ids
        self.positive_item_index = positive_item_index
        self.exclude_indptr = exclude_indptr
        self.exclude_items = exclude_items
        self.strictly_later = strictly_later
        if (candidate_rows is None) == (candidate_items is None):
            raise ValueError(
                "expected the candidates as either candidate_rows (catalogue rows) or "
                "candidate_items (raw ids), got "
                + ("both" if candidate_rows is not None else "neither")
            )
        if candidate_rows is None:
            candidate_rows = _catalogue_rows(np.asarray(item_ids), np.asarray(candidate_items))
        self.candidate_rows = _as_rows(np.asarray(candidate_rows), len(item_ids))
        U, C = self.num_users, self.num_candidates
        if self.candidate_rows.shape != (U, C):
            raise ValueError(
                f"expected candidates of shape (U, C) = ({U}, {C}), got {self.candidate_rows.shape}"
            )
        if field_order is None:  # the materialised rows' order, else user fields first
            given = candidates.features if candidates is not None else {}
            field_order = list(given) or [*user_features, *item_features]
        self.field_order = tuple(field_order)
        _check_tables(self.field_order, user_features, item_features)
        if candidates is not None and len(candidates) != U * C:
            raise ValueError(
                f"expected {U} users * {C} candidates = {U * C} candidate rows, "
                f"got {len(candidates)}"
            )
        self._candidates = candidates

    def __len__(self) -> int:
        """Number of evaluation rows: users x candidates (U * C)."""
        return self.num_users * self.num_candidates

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def candidate_items(self) -> np.ndarray:
        return np.asarray(self.item_ids)[self.candidate_rows]  # (U, C)

    def candidate_batch(self, start: int, end: int) -> Batch:
        """Features of users [start, end)'s candidates: field -> ((end - start) * C, ...),
        row (u - start) * C + j for user u's candidate j, fields in `field_order`."""
        C = self.num_candidates
        rows = torch.from_numpy(self.candidate_rows)
        return gather_candidate_rows(
            self.user_features, self.item_features, rows, self.field_order, start * C, end * C
        )

    @property
    def candidates(self) -> TabularDataset:
        """Every candidate row materialised (U * C rows, labels 1 for each user's first):
        for small data and inspection; evaluation never builds it. Built once, then kept."""
        if self._candidates is None:
            U, C = self.num_users, self.num_candidates
            labels = np.zeros((U, C), dtype=np.float32)
            labels[:, 0] = 1.0
            self._candidates = TabularDataset(self.candidate_batch(0, U), labels.reshape(-1))
        return self._candidates

    def excluded_for(self, u: int) -> np.ndarray:
        return self.exclude_items[self.exclude_indptr[u] : self.exclude_indptr[u + 1]]


def _as_rows(rows: np.ndarray, num_items: int) -> np.ndarray:
    """Catalogue rows as int32 (a copy only where the dtype changes)."""
    if rows.dtype.kind not in "iu":
        raise ValueError(f"expected integer candidate_rows, got dtype {rows.dtype}")
    if num_items > np.iinfo(np.int32).max:
        raise ValueError(f"expected a catalogue of fewer than 2**31 items, got {num_items}")
    return rows.astype(np.int32, copy=False)


def _catalogue_rows(item_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The row of each raw id of `items` in the catalogue `item_ids`."""
    if items.size and not item_ids.size:
        raise ValueError("expected a catalogue (item_ids) to look candidate items up in, got none")
    order = np.argsort(item_ids, kind="stable")
    at = np.searchsorted(item_ids, items, sorter=order).clip(max=max(item_ids.size - 1, 0))
    rows = order[at]
    missing = item_ids[rows] != items
    if missing.any():
        raise ValueError(
            f"expected every candidate item in item_ids, got {int(missing.sum())} that are not, "
            f"e.g. {items[missing][0]!r}"
        )
    return rows


def _check_tables(fields: tuple[str, ...], user_features: Batch, item_features: Batch) -> None:
    """A candidate row's fields are exactly the columns of the two tables, each in one."""
    both = sorted(set(user_features) & set(item_features))
    if both:
        raise ValueError(f"expected disjoint user and item feature fields, got {both} in both")
    tables = set(user_features) | set(item_features)
    if len(set(fields)) != len(fields) or set(fields) != tables:
        raise ValueError(
            f"expected field_order to name each column of the user and item tables once, got "
            f"{list(fields)} for user fields {list(user_features)} and item fields "
            f"{list(item_features)}"
        )
