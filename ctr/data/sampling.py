"""Negative sampling: fresh training negatives per epoch, fixed evaluation candidates.

Both samplers work on a (U, I) boolean interaction mask (users x catalogue
rows), dense or bit-packed (ctr.data.masks.InteractionMask: 463 MB instead of
3.7 GB for MovieLens-20M), and never loop over users:

- training: draw items uniformly, redraw the ones that hit a training
  positive of their user until none does (rejection sampling). Only
  training interactions are consulted: excluding validation/test items would
  tell the model what is held out.
- evaluation (ctr.data.candidates, re-exported here): one uniform random key
  per (user, item), known items get +inf, and the C smallest keys per row are
  a uniform sample without replacement; for large U x I, rejection sampling
  of distinct items instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ctr.data.candidates import sample_eval_candidates
from ctr.data.dataset import TabularDataset
from ctr.data.epoch import EpochRows, RowTables
from ctr.data.masks import InteractionMask, row_counts

__all__ = [
    "EVAL_STREAM",
    "TRAIN_STREAM",
    "NegativeSamplingTrainSet",
    "sample_eval_candidates",
    "sample_uniform_negatives",
    "seed_entropy",
]

# Last entropy word of each random stream, so the training and evaluation draws
# never share a stream even when a seed and an epoch coincide.
TRAIN_STREAM = 0
EVAL_STREAM = 1


def seed_entropy(*parts: int) -> list[int]:
    """Integers (possibly negative) -> non-negative entropy for numpy's SeedSequence."""
    return [int(p) % 2**64 for p in parts]


def sample_uniform_negatives(
    user_rows: np.ndarray,
    known: np.ndarray | InteractionMask,
    num_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Items drawn uniformly (with replacement) among those each user has not interacted with.

    Args:
        user_rows: (N,) row of each positive's user in `known`.
        known: (U, I) bool (dense or an InteractionMask), True where the user has
            an interaction to avoid.
        num_negatives: K draws per positive.
        rng: the source of randomness.

    Returns:
        (N, K) int64 item rows (columns of `known`).
    """
    num_items = known.shape[1]
    users = np.repeat(user_rows, num_negatives)  # (N*K,)
    items = rng.integers(0, num_items, size=users.shape[0], dtype=np.int64)
    redraw = np.flatnonzero(known[users, items])
    # Each round keeps ~ (1 - pool share) of the collisions; a user with 737 of
    # 1,682 items (the heaviest in ML-100K) needs ~ 40 rounds to reach 1e-15.
    while redraw.size:
        items[redraw] = rng.integers(0, num_items, size=redraw.size, dtype=np.int64)
        redraw = redraw[known[users[redraw], items[redraw]]]
    return items.reshape(-1, num_negatives)


class NegativeSamplingTrainSet:
    """Training positives plus K fresh negatives per positive for every epoch.

    `sample_epoch(epoch, seed)` returns the EpochRows (ctr.data.epoch) of N * (1 + K)
    rows: rows [0, N) are the positives (label 1) in a fixed order; row N + i*K + j
    is the j-th negative (label 0) of positive i: the same user's features and
    context (its history) and the sampled item's own features. The draw depends
    only on (seed, epoch). An epoch holds its sampled items (int32) and gathers a
    batch's columns from the user and item tables, which every epoch shares.

    This class and its EpochRows alone know that layout; code that batches or
    weighs the rows asks them: `row_weights(w)` spreads a weight per positive
    over the epoch's rows, `group_rows(positives)` gives the rows of each
    positive and its K negatives (for losses that compare a positive with its
    own negatives).

    Args:
        positives: the N training positives (label 1), every column materialised;
            or None, and `fields` and `context` say the same without materialising
            (build_train_set does so: at MovieLens-20M scale the columns take GBs).
        user_rows: (N,) row of each positive's user in `user_features` / `train_mask`.
        item_rows: (N,) row of each positive's item in `item_features` / `train_mask`;
            `positives` must hold exactly the features at (user_rows, item_rows).
        user_features: field -> (U, ...) encoded user-side columns.
        item_features: field -> (I, ...) encoded item-side columns (the catalogue).
        train_mask: (U, I) bool, dense or an InteractionMask: the TRAINING
            interactions only.
        num_negatives: K.
        item_ids: (I,) raw ids of the catalogue rows (for `negative_item_ids`).
        recency_rank: (N,) for each positive, how many training interactions of the
            same user come after it (0 = the user's last one); what
            `recency_weights` needs. None where the data has no time order.
        context_fields: fields of `positives` that belong to the row, neither the
            user's nor the item's (the behaviour `history`): a negative carries its
            positive's value.
        fields: with positives=None, the fields of a row in order: each is a
            user-side, an item-side or a `context` field.
        context: with positives=None, field -> the N positives' context column: a
            (N, ...) tensor or a ctr.data.history.HistoryWindows.
    """

    def __init__(
        self,
        positives: TabularDataset | None,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        user_features: dict[str, torch.Tensor],
        item_features: dict[str, torch.Tensor],
        train_mask: np.ndarray | InteractionMask,
        num_negatives: int,
        item_ids: np.ndarray | None = None,
        recency_rank: np.ndarray | None = None,
        context_fields: tuple[str, ...] = (),
        *,
        fields: tuple[str, ...] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if positives is not None:
            if fields is not None or context is not None:
                raise ValueError("expected either positives or fields and context, got both")
            fields = tuple(positives.features)
            missing = [f for f in context_fields if f not in positives.features]
            if missing:
                raise ValueError(f"context fields {missing} are not columns of the positives")
            context = {f: positives.features[f] for f in context_fields}
        elif fields is None:
            raise ValueError("expected the positives, or the fields of a row (fields=...)")
        context = dict(context or {})
        n = user_rows.shape[0]
        if user_rows.shape != (n,) or item_rows.shape != (n,):
            raise ValueError(
                f"expected user_rows and item_rows of shape ({n},), got "
                f"{user_rows.shape} and {item_rows.shape}"
            )
        if positives is not None and len(positives) != n:
            raise ValueError(f"expected {n} positives (one per user_rows), got {len(positives)}")
        unknown = [
            f
            for f in fields
            if f not in user_features and f not in item_features and f not in context
        ]
        if unknown:
            raise ValueError(
                f"fields {unknown} are neither user-side, item-side nor context fields; "
                f"user fields: {list(user_features)}, item fields: {list(item_features)}, "
                f"context fields: {list(context)}"
            )
        wrong = {f: len(c) for f, c in context.items() if len(c) != n}
        if wrong:
            raise ValueError(
                f"expected context columns of {n} rows (one per positive), got {wrong}"
            )
        if recency_rank is not None and np.shape(recency_rank) != (n,):
            raise ValueError(f"expected recency_rank of shape ({n},), got {np.shape(recency_rank)}")
        users = np.unique(user_rows)
        full = np.flatnonzero(row_counts(train_mask, users) == train_mask.shape[1])
        if full.size:
            raise ValueError(
                f"{full.size} users interacted with every item in training: "
                f"no negatives can be drawn for them"
            )
        self._positives = positives
        self.user_rows = np.asarray(user_rows, dtype=np.int64)
        self.user_features = user_features
        self.item_features = item_features
        self.train_mask = train_mask
        self.num_negatives = int(num_negatives)
        self.item_ids = item_ids
        self.item_rows = np.asarray(item_rows, dtype=np.int64)
        self.recency_rank = (
            None if recency_rank is None else np.asarray(recency_rank, dtype=np.int64)
        )
        self.context_fields = tuple(context)
        # what every epoch shares: each epoch adds its (N * K,) sampled items
        self.tables = RowTables(
            torch.from_numpy(self.user_rows),
            torch.from_numpy(self.item_rows),
            user_features,
            item_features,
            tuple(fields),
            context,
        )

    @property
    def positives(self) -> TabularDataset:
        """The N positives, every column: the one given, or materialised on each access
        (for tests and tools: at scale, gather what is needed with sample_epoch(...).take)."""
        if self._positives is not None:
            return self._positives
        n = self.num_positives
        batch = self.tables.gather(torch.arange(n), self.tables.item_rows.long())
        return TabularDataset(batch, torch.ones(n))

    @property
    def num_positives(self) -> int:
        return self.user_rows.shape[0]

    def __len__(self) -> int:
        return self.num_positives * (1 + self.num_negatives)

    def recency_weights(self, half_life: float, floor: float) -> torch.Tensor:
        """(N,) loss weight of each positive: max(floor, 0.5 ** (rank / half_life)), mean 1.

        `rank` is `recency_rank`: a user's last training interaction weighs most
        and one `half_life` interactions earlier half as much, down to `floor` (relative
        to the last). Scaled to mean 1 so the loss keeps its unweighted size.
        """
        if self.recency_rank is None:
            raise ValueError(
                "recency weights need the time order of the training interactions, and "
                "this training set was built without recency_rank; unset "
                "training.recency_half_life or use a data set with timestamps"
            )
        w = np.maximum(floor, 0.5 ** (self.recency_rank / float(half_life)))
        return torch.from_numpy((w / w.mean()).astype(np.float32))

    def negative_items(self, epoch: int, seed: int) -> np.ndarray:
        """(N, K) catalogue rows of the negatives of `epoch` (what sample_epoch uses)."""
        rng = np.random.default_rng(seed_entropy(seed, epoch, TRAIN_STREAM))
        return sample_uniform_negatives(self.user_rows, self.train_mask, self.num_negatives, rng)

    def negative_item_ids(self, epoch: int, seed: int) -> np.ndarray:
        """(N, K) raw item ids of the negatives of `epoch`."""
        if self.item_ids is None:
            raise ValueError("this training set was built without item_ids")
        return self.item_ids[self.negative_items(epoch, seed)]

    def sample_epoch(self, epoch: int, seed: int) -> EpochRows:
        """Positives followed by K fresh negatives each: N * (1 + K) rows (ctr.data.epoch)."""
        negatives = self.negative_items(epoch, seed).reshape(-1)  # (N*K,)
        return EpochRows(self.tables, torch.from_numpy(negatives), self.num_negatives)

    # ------------------------------------------------------------- epoch row layout
    def _per_row(self, values: torch.Tensor) -> torch.Tensor:
        """(N, ...) one value per positive -> (N * (1 + K), ...) one per epoch row.

        Row i < N gets values[i]; row N + i*K + j (negative j of positive i) too.
        """
        return torch.cat([values, values.repeat_interleave(self.num_negatives, dim=0)])

    def row_weights(self, positive_weights: torch.Tensor) -> torch.Tensor:
        """(N * (1 + K),) loss weight of each row of an epoch: a negative weighs what its
        positive does.

        Args:
            positive_weights: (N,) weight of each positive, e.g. `recency_weights(...)`.
        """
        weights = torch.as_tensor(positive_weights)
        if weights.shape != (self.num_positives,):
            raise ValueError(
                f"expected one weight per positive, shape ({self.num_positives},), "
                f"got {tuple(weights.shape)}"
            )
        return self._per_row(weights)

    def group_rows(self, positives: torch.Tensor, check: bool = True) -> torch.Tensor:
        """(G, 1 + K) epoch rows of G groups: the positive's row, then its K negatives'.

        Args:
            positives: (G,) indices of positives, in [0, N); the rows are on its device.
            check: whether to check the range of `positives`; False skips it (reading
                the range back from an accelerator waits for it), for indices known
                to be in range, such as a slice of a permutation of [0, N).

        Example (N = 3, K = 2): group_rows([2, 0]) -> [[2, 7, 8], [0, 3, 4]].
        """
        n, k = self.num_positives, self.num_negatives
        pos = torch.as_tensor(positives, dtype=torch.int64)
        if pos.dim() != 1:
            raise ValueError(f"expected a (G,) tensor of positives, got shape {tuple(pos.shape)}")
        if check and pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= n):
            raise ValueError(
                f"expected positives in [0, {n}), got values from {int(pos.min())} "
                f"to {int(pos.max())}"
            )
        negatives = n + pos.unsqueeze(1) * k + torch.arange(k, device=pos.device)  # (G, K)
        return torch.cat([pos.unsqueeze(1), negatives], dim=1)  # (G, 1 + K)
