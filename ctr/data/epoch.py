"""One training epoch's rows as indices: N positives, then K fresh negatives each.

An epoch has N * (1 + K) rows: row i < N is positive i (label 1), row
N + i*K + j is negative j of positive i (label 0), with positive i's user and
context (its behaviour history) and the sampled item. A row's feature columns
are thus a row of the user table, a row of the catalogue and a positive's
context; materialised they cost 68 bytes a row on MovieLens-20M's fields
(+ 8 L with a history of L items): 6.8 GB for 20M positives and K = 4. So the
epoch keeps what changes each epoch, the N * K sampled items as int32
(3.2 bytes a row at K = 4), and gathers a batch's columns when asked:

    rows = train_ds.sample_epoch(epoch, seed)     # EpochRows
    rows = rows.to(device)                        # the tables move once per train set
    for index in rows.shuffled_batch_indices(1024, generator, device=device):
        batch, labels = rows.take(index)          # {field: (B, ...)} int64, (B,) float32

`take` gives exactly what TabularDataset.take gives on the materialised rows
(the same fields in the same order, int64 / float32), and
`shuffled_batch_indices` draws the same permutation from the generator, so
training on EpochRows sees the very batches a TabularDataset would give.
`materialise()` builds that TabularDataset (for tests and tools; never at scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ctr.data.dataset import (
    Batch,
    TabularDataset,
    batch_starts,
    num_batches,
    shuffled_batch_indices,
)

__all__ = ["EpochRows", "RowTables"]


def _widen(values: torch.Tensor) -> torch.Tensor:
    """Integer columns as int64 and float columns as float32, as TabularDataset holds them."""
    if values.is_floating_point():
        return values.to(torch.float32)
    return values.to(torch.int64)


def _nbytes(values: Any) -> int:
    if isinstance(values, torch.Tensor):
        return values.numel() * values.element_size()
    return int(values.nbytes)


class RowTables:
    """What every epoch of one training set shares: the positives and the feature tables.

    Args:
        user_rows: (N,) each positive's row in the user tables (stored int32).
        item_rows: (N,) each positive's row in the catalogue (stored int32).
        user_features: field -> (U, ...) user-side columns.
        item_features: field -> (I, ...) item-side columns (the catalogue).
        fields: every field of a row, in the order a batch lists them.
        context: field -> the N positives' column of each context field (a negative
            carries its positive's value): a (N, ...) tensor, or an object with
            take(index) -> (B, ...) tensor, to(device) and nbytes (a HistoryWindows).

    A field in `context` is read there; otherwise from the user tables, then the
    catalogue.
    """

    def __init__(
        self,
        user_rows: torch.Tensor,
        item_rows: torch.Tensor,
        user_features: dict[str, torch.Tensor],
        item_features: dict[str, torch.Tensor],
        fields: tuple[str, ...],
        context: dict[str, Any],
    ) -> None:
        self.user_rows = torch.as_tensor(user_rows).to(torch.int32)  # (N,)
        self.item_rows = torch.as_tensor(item_rows).to(torch.int32)  # (N,)
        # widened once: the tables are small, and a batch's gather then needs no cast
        self.user_features = {k: _widen(torch.as_tensor(v)) for k, v in user_features.items()}
        self.item_features = {k: _widen(torch.as_tensor(v)) for k, v in item_features.items()}
        self.fields = tuple(fields)
        self.context = dict(context)
        self._sources = tuple(
            (name, "context" if name in self.context
             else "user" if name in self.user_features else "item")
            for name in self.fields
        )  # fmt: skip
        self._on: dict[str, RowTables] = {}  # the copy on each other device, made once

    @property
    def num_positives(self) -> int:
        return self.user_rows.shape[0]

    @property
    def device(self) -> torch.device:
        return self.user_rows.device

    @property
    def nbytes(self) -> int:
        tables = [*self.user_features.values(), *self.item_features.values()]
        return sum(map(_nbytes, [self.user_rows, self.item_rows, *tables, *self.context.values()]))

    def to(self, device: str | torch.device) -> RowTables:
        """These tables on `device`; moved once, then the same copy every epoch."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = str(device)
        if key not in self._on:
            self._on[key] = RowTables(
                self.user_rows.to(device),
                self.item_rows.to(device),
                {k: v.to(device) for k, v in self.user_features.items()},
                {k: v.to(device) for k, v in self.item_features.items()},
                self.fields,
                {k: v.to(device) for k, v in self.context.items()},
            )
        return self._on[key]

    def gather(self, positives: torch.Tensor, items: torch.Tensor) -> Batch:
        """{field: (B, ...)} of B rows: positive positives[b]'s user and context, item items[b].

        Args:
            positives: (B,) int64 positive of each row, in [0, N).
            items: (B,) int64 catalogue row of each row.
        """
        users = self.user_rows[positives].long()  # (B,)
        batch: Batch = {}
        for name, source in self._sources:
            if source == "user":
                batch[name] = self.user_features[name].index_select(0, users)
            elif source == "item":
                batch[name] = self.item_features[name].index_select(0, items)
            else:
                column = self.context[name]
                batch[name] = (
                    _widen(column.index_select(0, positives))
                    if isinstance(column, torch.Tensor)
                    else column.take(positives)
                )
        return batch


class EpochRows:
    """One epoch: N positives and their K negatives each, N * (1 + K) rows, as indices.

    Args:
        tables: the positives and feature tables every epoch shares.
        negatives: (N * K,) catalogue row of each negative, positive by positive
            (row N + i*K + j of the epoch is negatives[i*K + j]); stored int32.
        num_negatives: K.
    """

    def __init__(self, tables: RowTables, negatives: torch.Tensor, num_negatives: int) -> None:
        n, k = tables.num_positives, int(num_negatives)
        if negatives.shape != (n * k,):
            raise ValueError(
                f"expected ({n * k},) negatives ({n} positives x {k}), got {tuple(negatives.shape)}"
            )
        self.tables = tables
        self.negatives = negatives.to(torch.int32)  # (N*K,)
        self.num_negatives = k
        self._materialised: TabularDataset | None = None

    @property
    def num_positives(self) -> int:
        return self.tables.num_positives

    def __len__(self) -> int:
        return self.num_positives * (1 + self.num_negatives)

    @property
    def nbytes(self) -> int:
        """Bytes this epoch holds of its own (the shared tables are `tables.nbytes`)."""
        own = _nbytes(self.negatives)
        return own if self._materialised is None else own + _materialised_bytes(self._materialised)

    def take(self, index: torch.Tensor) -> tuple[Batch, torch.Tensor]:
        """Gather the rows at `index` as one batch: ({field: (B, ...)}, labels (B,)).

        `index` is a (B,) tensor on the rows' device (see `to`) or array-like.
        """
        if self._materialised is not None:
            return self._materialised.take(index)
        index = torch.as_tensor(index, dtype=torch.int64, device=self.negatives.device)  # (B,)
        n, k = self.num_positives, self.num_negatives
        offset = index - n  # (B,) >= 0 for the negatives
        negative = offset >= 0
        positives = torch.where(negative, offset.div(k, rounding_mode="floor"), index)  # (B,)
        items = torch.where(
            negative,
            self.negatives[offset.clamp(min=0)],
            self.tables.item_rows[positives],
        ).long()  # (B,)
        labels = torch.logical_not(negative).to(torch.float32)  # (B,)
        return self.tables.gather(positives, items), labels

    def to(self, device: str | torch.device) -> EpochRows:
        """The same rows on `device` (the shared tables move once per device)."""
        if self._materialised is not None:
            rows = EpochRows(self.tables, self.negatives, self.num_negatives)
            rows._materialised = self._materialised.to(device)
            return rows
        return EpochRows(self.tables.to(device), self.negatives.to(device), self.num_negatives)

    # ----------------------------------------------------- the batches of an epoch
    def shuffled_batch_indices(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> Iterator[torch.Tensor]:
        """The (B,) row indices of each batch of one permutation drawn from `generator`.

        The permutation TabularDataset.shuffled_batch_indices draws for as many rows
        (drawn on the CPU, moved to `device` once), so the batches are the same.
        """
        return shuffled_batch_indices(len(self), batch_size, generator, drop_last, device)

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """(features, labels) batches covering every row once, as TabularDataset.iter_batches."""
        if shuffle:
            indices = self.shuffled_batch_indices(batch_size, generator, drop_last)
        else:
            n, device = len(self), self.negatives.device
            indices = (
                torch.arange(start, min(start + batch_size, n), device=device)
                for start in batch_starts(n, batch_size, drop_last)
            )
        for index in indices:
            yield self.take(index)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return num_batches(len(self), batch_size, drop_last)

    # ------------------------------------------------------------ materialised
    def materialise(self) -> TabularDataset:
        """Every row's columns, N * (1 + K) of them, as one TabularDataset (tests, tools)."""
        if self._materialised is not None:
            return self._materialised
        features, labels = self.take(torch.arange(len(self), device=self.negatives.device))
        return TabularDataset(features, labels)

    @property
    def features(self) -> Batch:
        """{field: (N * (1 + K), ...)}: every row's columns, materialised on first access.

        From then on this epoch keeps them (and `take` reads them, a column added
        to this dict included): for tests and tools that want whole columns, not
        for training at scale.
        """
        if self._materialised is None:
            self._materialised = self.materialise()
        return self._materialised.features

    @property
    def labels(self) -> torch.Tensor:
        """(N * (1 + K),) float32: 1 for the N positives, then 0 for the negatives."""
        if self._materialised is not None:
            return self._materialised.labels
        n = self.num_positives
        labels = torch.zeros(len(self), dtype=torch.float32, device=self.negatives.device)
        labels[:n] = 1.0
        return labels


def _materialised_bytes(rows: TabularDataset) -> int:
    return sum(map(_nbytes, rows.features.values())) + _nbytes(rows.labels)
