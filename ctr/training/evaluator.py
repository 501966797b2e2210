"""RankingEvaluator: scores an EvalSplit with a model and returns every evaluation metric.

The metrics themselves, and the protocol they follow, are in ctr/training/metrics.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ctr.data.dataset import Batch, EvalSplit, _to_tensor, gather_candidate_rows
from ctr.training.metrics import (
    ExclusionLists,
    _full_metrics,
    _later_metrics,
    _pooled_metrics,
    _ranking_metrics,
    _sampled_metrics,
    full_ranks_from_scores,
)
from ctr.training.scoring import CatalogueScorer, Model, forward_logits


class RankingEvaluator:
    """Scores an `EvalSplit` with a model and returns all evaluation metrics.

    Everything that does not depend on the model (the user and item tables and
    the (U, C) candidate rows on the device, the tiled catalogue, the exclusion
    lists) is set up once here, so `evaluate` is little more than the model's
    forward passes. No U * C feature rows and no (U, I) matrix are ever built:
    a batch of candidate rows is gathered from the tables when it is scored, and
    a chunk of users' exclusion rows when that chunk is ranked.

    Args:
        split: the validation or test split.
        batch_size: rows per forward pass, for the sampled candidates (rows of the
            user-major U * C layout, a batch may span users) and (about) for the full
            ranking, where a chunk holds max(1, batch_size // I) users.
        ks: cut-offs for the sampled HR@K and NDCG@K.
        full_ranking: also rank every positive against the whole catalogue
            (adds `{name}_full_hr_at_10` and `{name}_full_ndcg_at_10`).
        device: where batches are sent; the model must already be there.

    Example:
        evaluator = RankingEvaluator(val_split, device="cpu")
        metrics = evaluator.evaluate(model)  # {"val_hr_at_10": ..., "val_auc": ...}
        evaluator.last_seconds               # wall time of that call
    """

    def __init__(
        self,
        split: EvalSplit,
        batch_size: int = 65536,
        ks: Sequence[int] = (5, 10, 20),
        full_ranking: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"expected a non-empty list of cut-offs k >= 1, got {ks}")
        U, C = split.num_users, split.num_candidates
        if U < 1 or C < 2:
            raise ValueError(f"expected at least 1 user and 2 candidates, got U={U}, C={C}")
        _check_split(split)
        self.split = split
        self.batch_size = int(batch_size)
        self.ks = ks
        self.full_ranking = full_ranking
        self.device = torch.device(device)
        self.last_seconds: float | None = None

        dev = self.device
        # the two tables on the device: sampled candidates and the catalogue gather from them
        self._users: Batch = {k: _to_tensor(k, v).to(dev) for k, v in split.user_features.items()}
        self._items: Batch = {k: _to_tensor(k, v).to(dev) for k, v in split.item_features.items()}
        self._candidate_rows = torch.from_numpy(split.candidate_rows).to(dev)  # (U, C) int32
        self._num_rows = U * C

        if full_ranking:
            # the catalogue, tiled once for a chunk of max(1, batch_size // I) users
            self._catalogue = CatalogueScorer(self._items, chunk_rows=self.batch_size, max_users=U)
            self._catalogue.check_users(self._users)
            self._positive_index = torch.as_tensor(
                np.asarray(split.positive_item_index, dtype=np.int64), device=dev
            )  # (U,)
            # dense (u, I) rows of a chunk of users only, from the CSR lists
            self._exclude = ExclusionLists(split, dev)

    def metric_names(self, full_ranking: bool | None = None) -> list[str]:
        """The keys `evaluate(model, full_ranking)` returns, known before any model is scored.

        They come from the functions that build `evaluate`'s dict, applied to one
        placeholder user ranked first, so the two cannot drift apart.
        """
        name, ranks = self.split.name, np.zeros(1, dtype=np.int64)
        names = [
            *_ranking_metrics(name, ranks, self.ks),
            *_later_metrics(name, ranks, None if self.split.strictly_later is None else [True]),
            *_pooled_metrics(name, np.array([[0.5, 0.5]])),
        ]
        if self._wants_full(full_ranking):
            names += _full_metrics(name, ranks)
        return names

    def _wants_full(self, full_ranking: bool | None) -> bool:
        if full_ranking and not self.full_ranking:
            raise ValueError(
                "full ranking was asked for, but this evaluator was built with "
                "full_ranking=False (it holds no catalogue); build it with full_ranking=True"
            )
        return self.full_ranking if full_ranking is None else full_ranking

    def _score_candidates(self, model: Model) -> torch.Tensor:
        """(U * C,) logits of the sampled candidates, row u * C + j for user u's candidate j.

        A forward pass holds batch_size rows of that layout, gathered from the user and
        item tables on the device: no more than one batch of rows exists at a time.
        """
        out = torch.empty(self._num_rows, device=self.device)
        fields = self.split.field_order
        for start in range(0, self._num_rows, self.batch_size):
            end = min(start + self.batch_size, self._num_rows)
            batch = gather_candidate_rows(
                self._users, self._items, self._candidate_rows, fields, start, end
            )
            out[start:end] = forward_logits(model, batch, end - start)
        return out

    def _full_ranks(self, model: Model) -> torch.Tensor:
        """(U,) rank of each positive against the catalogue minus exclusions."""
        ranks = torch.empty(self.split.num_users, dtype=torch.int64, device=self.device)
        for start, end, scores in self._catalogue.chunks(model, self._users):  # (u, I)
            if torch.isnan(scores).any():
                raise ValueError(
                    f"{self.split.name}: the model produced NaN logits (did training diverge?)"
                )
            ranks[start:end] = full_ranks_from_scores(
                scores, self._positive_index[start:end], self._exclude.rows(start, end)
            )
        return ranks

    def evaluate(
        self, model: Model, full_ranking: bool | None = None, sampled: bool = True
    ) -> dict[str, float]:
        """Score the split with `model` (batch dict -> logits (B, 1)) and return
        {name}_hr_at_{k}, {name}_ndcg_at_{k}, {name}_auc, {name}_logloss and,
        with full ranking, {name}_full_hr_at_10 and {name}_full_ndcg_at_10.

        full_ranking: None ranks against the catalogue when the evaluator was built
        with full_ranking=True; False skips it for this call (the cheaper sampled
        metrics only); True requires an evaluator built with it.
        sampled: False skips the sampled candidates (only the full-ranking metrics,
        e.g. for weights whose sampled metrics are known already).

        An nn.Module is put in eval mode and its previous mode restored after.
        """
        t0 = time.perf_counter()
        full = self._wants_full(full_ranking)
        # remember every submodule's mode: some may be frozen in eval on purpose
        modes = (
            [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
        )
        if modes:
            model.eval()
        try:
            with torch.inference_mode():
                metrics: dict[str, float] = {}
                if sampled:
                    U, C = self.split.num_users, self.split.num_candidates
                    logits = self._score_candidates(model).view(U, C)
                    metrics = _sampled_metrics(self.split, logits, self.ks)
                full_ranks = self._full_ranks(model) if full else None
                if full_ranks is not None:
                    metrics.update(_full_metrics(self.split.name, full_ranks.cpu().numpy()))
        finally:
            for m, training in modes:
                m.training = training
        self.last_seconds = time.perf_counter() - t0
        return metrics


def _check_split(split: EvalSplit) -> None:
    """The split's candidates and tables agree: a ValueError naming what does not."""
    U, C, n_items = split.num_users, split.num_candidates, len(split.item_ids)
    rows = split.candidate_rows
    if rows.shape != (U, C):
        raise ValueError(f"expected candidate_rows of shape ({U}, {C}), got {rows.shape}")
    if rows.min() < 0 or rows.max() >= n_items:
        raise ValueError(
            f"expected candidate_rows to be catalogue rows in [0, {n_items}), "
            f"got range [{rows.min()}, {rows.max()}]"
        )
    positive = np.asarray(split.positive_item_index)
    if positive.shape != (U,):
        raise ValueError(f"expected positive_item_index of shape ({U},), got {positive.shape}")
    differ = int((rows[:, 0] != positive).sum())
    if differ:  # the labels follow from the layout: column 0 is the positive
        raise ValueError(
            f"expected each user's positive (positive_item_index) first in its candidates, "
            f"column 0 of candidate_rows; {differ} of {U} users differ"
        )
    for table, n, what in (
        (split.user_features, U, "user"),
        (split.item_features, n_items, "item"),
    ):
        for k, v in table.items():
            if v.shape[0] != n:
                raise ValueError(f"{what} feature {k!r}: expected {n} rows, got {v.shape[0]}")
