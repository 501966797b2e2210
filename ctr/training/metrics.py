"""Evaluation metrics: AUC, LogLoss, HR@K, NDCG@K (RankingEvaluator is in evaluator.py).

Protocol (see DESIGN.md, "Data: MovieLens-100K protocol"):

- Sampled ranking: each user's held-out positive is ranked among its C - 1 fixed
  sampled negatives. Full ranking: it is ranked among every catalogue item except
  the user's other known interactions.
- Ranks are 0-based and ties count against the positive: rank = number of OTHER
  candidates whose score is >= the positive's score.
- HR@K = mean(rank < K); NDCG@K = mean(1 / log2(rank + 2) if rank < K else 0).
- AUC and LogLoss are computed once over all evaluation rows pooled, on sigmoid
  probabilities; never averaged over batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ctr.data.dataset import EvalSplit

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

_EPS = 1e-7  # probability clipping for LogLoss
_AUC_BLOCK = 1 << 20  # scores of the larger class located per block in AUC


def _to_numpy(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def _check_pair(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _to_numpy(labels)
    p = _to_numpy(scores)
    if y.shape != p.shape:
        raise ValueError(
            f"expected labels and scores of the same length, got {y.shape[0]} and {p.shape[0]}"
        )
    if y.size == 0:
        raise ValueError("expected at least one row, got empty labels and scores")
    if not ((y == 0.0) | (y == 1.0)).all():
        raise ValueError(f"expected labels in {{0, 1}}, got values {np.unique(y)[:10].tolist()}")
    if np.isnan(p).any():
        raise ValueError("expected finite scores, got NaN (did training diverge?)")
    return y, p


def compute_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC over all rows pooled; `scores` may be probabilities or any monotone score.

    Computed exactly as the Mann-Whitney statistic, ties counted one half:
    AUC = (#(pos, neg) pairs with s_pos > s_neg + 0.5 #ties) / (P N). The smaller
    class is sorted and the larger one located in it with a binary search, so an
    evaluation set with few positives (1 per 1000 rows) costs O(N log P) instead of
    sklearn's full sort and ROC curve; the result equals `sklearn.metrics.roc_auc_score`
    to float rounding (tests check it).
    """
    y, p = _check_pair(labels, scores)
    is_pos = y == 1.0
    num_pos = int(is_pos.sum())
    num_neg = y.size - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            f"expected both classes in labels for AUC, got only label {int(y[0])} in {y.size} rows"
        )
    return _auc(p[is_pos], p[~is_pos])


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of positives `pos` (P,) against negatives `neg` (any shape), ties one half.

    The counts are integers, so summing them over blocks of the larger class
    changes nothing: the result is that of one pass, without its (N,) temporaries.
    """
    num_pos, num_neg = pos.size, neg.size
    wins2 = 0  # twice the Mann-Whitney count: 2 per won pair, 1 per tie
    if num_pos <= num_neg:
        small, large, sign = np.sort(pos.reshape(-1)), neg, -1
    else:
        small, large, sign = np.sort(neg.reshape(-1)), pos, 1
    row_size = int(np.prod(large.shape[1:]))  # 1 for a 1-D array
    step = max(1, _AUC_BLOCK // max(1, row_size))
    for start in range(0, large.shape[0], step):
        block = large[start : start + step]
        below = np.searchsorted(small, block, side="left")  # smaller-class scores < each
        upto = np.searchsorted(small, block, side="right")  # smaller-class scores <= each
        ties = int((upto - below).sum())
        if sign < 0:  # per negative: positives above it count 1, tied ones 1/2
            wins2 += 2 * (num_pos * block.size - int(upto.sum())) + ties
        else:  # per positive: negatives below it count 1, tied ones 1/2
            wins2 += 2 * int(below.sum()) + ties
    return wins2 / (2.0 * num_pos * num_neg)


def compute_logloss(labels: ArrayLike, scores: ArrayLike) -> float:
    """Mean binary cross-entropy over all rows pooled; `scores` are probabilities,
    clipped to [1e-7, 1 - 1e-7] (as `sklearn.metrics.log_loss`, which it equals to
    float rounding without that function's per-call validation cost)."""
    y, p = _check_pair(labels, scores)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"expected probabilities in [0, 1] (apply sigmoid to logits), "
            f"got range [{p.min():.4g}, {p.max():.4g}]"
        )
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(np.where(y == 1.0, np.log(p), np.log1p(-p))))


def _check_ranks(rankings: ArrayLike, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k}")
    r = _to_numpy(rankings, dtype=np.int64)
    if r.size == 0:
        raise ValueError("expected at least one rank, got an empty array")
    if r.min() < 0:
        raise ValueError(f"expected 0-based ranks >= 0, got {r.min()}")
    return r


def compute_hr_at_k(rankings: ArrayLike, k: int) -> float:
    """Hit ratio: mean over users of [rank < k]; ranks are 0-based."""
    r = _check_ranks(rankings, k)
    return float(np.mean(r < k))


def compute_ndcg_at_k(rankings: ArrayLike, k: int) -> float:
    """NDCG with one relevant item: mean of 1 / log2(rank + 2) if rank < k else 0."""
    r = _check_ranks(rankings, k)
    gains = np.where(r < k, 1.0 / np.log2(r.astype(np.float64) + 2.0), 0.0)
    return float(np.mean(gains))


def rank_of_positive(scores: torch.Tensor, positive_col: int = 0) -> torch.Tensor:
    """0-based rank of the positive in each row, ties counted against it.

    Args:
        scores: (U, C) scores (logits or probabilities) of each user's candidates.
        positive_col: column of the positive.

    Returns:
        (U,) int64: number of OTHER candidates with score >= the positive's score.
    """
    if scores.dim() != 2:
        raise ValueError(f"expected scores of shape (U, C), got {tuple(scores.shape)}")
    C = scores.shape[1]
    if not 0 <= positive_col < C:
        raise ValueError(f"expected positive_col in [0, {C}), got {positive_col}")
    pos = scores[:, positive_col : positive_col + 1]  # (U, 1)
    # the positive compares >= to itself once; subtract it
    return (scores >= pos).sum(dim=1) - 1  # (U,)


def _ranking_metrics(prefix: str, ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}_hr_at_{k}"] = compute_hr_at_k(ranks, k)
        out[f"{prefix}_ndcg_at_{k}"] = compute_ndcg_at_k(ranks, k)
    return out


def _later_metrics(prefix: str, ranks: np.ndarray, later: np.ndarray | None) -> dict[str, float]:
    """HR@10 and NDCG@10 of the users whose held-out interaction is strictly later than
    their previous one (`{prefix}_later_*`); none when `later` is None (no timestamps).

    Within one second the protocol orders interactions by item id, an artificial
    order that a model reading the history could exploit; these users have none.
    NaN when no user qualifies.
    """
    if later is None:
        return {}
    later = np.asarray(later, dtype=bool)
    if later.shape != ranks.shape:
        raise ValueError(
            f"expected one strictly_later flag per user, shape {ranks.shape}, got {later.shape}"
        )
    if not later.any():
        return {
            f"{prefix}_later_hr_at_10": float("nan"),
            f"{prefix}_later_ndcg_at_10": float("nan"),
        }
    return {
        f"{prefix}_later_hr_at_10": compute_hr_at_k(ranks[later], 10),
        f"{prefix}_later_ndcg_at_10": compute_ndcg_at_k(ranks[later], 10),
    }


class ExclusionLists:
    """The items each user skips in full ranking, as CSR lists; dense rows per chunk of users.

    A (U, I) mask costs a byte per cell (3.7 GB at MovieLens-20M's shape); the lists
    cost 8 bytes per excluded item, and `rows(start, end)` gives the mask of users
    [start, end) only, which a chunk of the catalogue ranking needs.

    Args:
        split: its `exclude_indptr` / `exclude_items` (catalogue rows) and
            `positive_item_index` (never skipped: it is not "another" interaction).
        device: where the lists and the rows live.
    """

    def __init__(self, split: EvalSplit, device: str | torch.device = "cpu") -> None:
        U, n_items = split.num_users, len(split.item_ids)
        indptr = np.asarray(split.exclude_indptr, dtype=np.int64)
        items = np.asarray(split.exclude_items, dtype=np.int64)
        end = indptr[-1] if indptr.size else None
        if indptr.shape != (U + 1,) or indptr[0] != 0 or end != items.size:
            raise ValueError(
                f"expected exclude_indptr of shape ({U + 1},) from 0 to len(exclude_items) "
                f"= {items.size}, got shape {indptr.shape} ending at {end}"
            )
        if (np.diff(indptr) < 0).any():
            raise ValueError("expected a non-decreasing exclude_indptr, got one that decreases")
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(
                f"expected exclude_items to be catalogue rows in [0, {n_items}), "
                f"got range [{items.min()}, {items.max()}]"
            )
        positive = np.asarray(split.positive_item_index, dtype=np.int64)
        if positive.shape != (U,) or (positive < 0).any() or (positive >= n_items).any():
            raise ValueError(
                f"expected positive_item_index of shape ({U},) with catalogue rows in "
                f"[0, {n_items}), got shape {positive.shape}"
            )
        self.num_items = n_items
        self._indptr = indptr  # (U + 1,) on the host: a chunk's slice bounds
        self._items = torch.from_numpy(items).to(device)  # (nnz,)
        self._counts = torch.from_numpy(np.diff(indptr)).to(device)  # (U,)
        self._positive = torch.from_numpy(positive).to(device)  # (U,)

    def rows(self, start: int, end: int) -> torch.Tensor:
        """(end - start, I) bool, True where users [start, end) skip an item."""
        n, lo, hi = end - start, int(self._indptr[start]), int(self._indptr[end])
        device = self._items.device
        local = torch.arange(n, device=device)  # (n,)
        owner = torch.repeat_interleave(local, self._counts[start:end], output_size=hi - lo)
        mask = torch.zeros(n, self.num_items, dtype=torch.bool, device=device)  # (n, I)
        mask[owner, self._items[lo:hi]] = True
        mask[local, self._positive[start:end]] = False
        return mask


def full_ranks_from_scores(
    scores: torch.Tensor, positive_index: torch.Tensor, exclude: torch.Tensor
) -> torch.Tensor:
    """Rank of each user's positive against the catalogue, skipping excluded items.

    Args:
        scores: (U, I) scores of every catalogue item per user.
        positive_index: (U,) catalogue row of each user's positive.
        exclude: (U, I) bool, True for items to skip (never the positive itself).

    Returns:
        (U,) int64 0-based ranks, ties counted against the positive.
    """
    U = scores.shape[0]
    pos = scores[torch.arange(U, device=scores.device), positive_index].unsqueeze(1)  # (U, 1)
    scores = scores.masked_fill(exclude, float("-inf"))
    # excluded items are -inf; `& ~exclude` also keeps them out if the positive is -inf
    return ((scores >= pos) & ~exclude).sum(dim=1) - 1  # (U,)


def evaluate_scores(
    split: EvalSplit,
    sampled_logits: ArrayLike,
    full_logits: ArrayLike | None = None,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    """The evaluator's metrics from precomputed logits (for baselines and tests).

    Args:
        split: the split the logits belong to.
        sampled_logits: (U * C,) or (U, C) logits of the candidates, row u * C + j for
            user u's candidate j (`split.candidate_batch`'s order).
        full_logits: optional (U, I) logits of every catalogue item per user.
        ks: cut-offs for HR@K and NDCG@K.

    Returns:
        The same keys as `RankingEvaluator.evaluate` (full-ranking keys only if
        `full_logits` is given).
    """
    U, C = split.num_users, split.num_candidates
    logits = torch.from_numpy(_to_numpy(sampled_logits, np.float32))
    if logits.numel() != U * C:
        raise ValueError(f"expected {U} * {C} = {U * C} sampled logits, got {logits.numel()}")
    metrics = _sampled_metrics(split, logits.reshape(U, C), ks)
    if full_logits is not None:
        full = torch.as_tensor(np.asarray(full_logits, dtype=np.float32))
        n_items = len(split.item_ids)
        if full.shape != (U, n_items):
            raise ValueError(
                f"expected full_logits of shape ({U}, {n_items}), got {tuple(full.shape)}"
            )
        ranks = full_ranks_from_scores(
            full,
            torch.as_tensor(np.asarray(split.positive_item_index, dtype=np.int64)),
            ExclusionLists(split).rows(0, U),  # (U, I): full_logits is that size already
        )
        metrics.update(_full_metrics(split.name, ranks.numpy()))
    return metrics


def _sampled_metrics(split: EvalSplit, logits: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Metrics of the (U, C) sampled candidates' logits (on any device), column 0 positive."""
    if torch.isnan(logits).any():
        raise ValueError(f"{split.name}: the model produced NaN logits (did training diverge?)")
    ranks = rank_of_positive(logits, positive_col=0).cpu().numpy()
    metrics = _ranking_metrics(split.name, ranks, ks)
    metrics.update(_later_metrics(split.name, ranks, split.strictly_later))
    probs = torch.sigmoid(logits.double()).cpu().numpy()  # (U, C)
    metrics.update(_pooled_metrics(split.name, probs))
    return metrics


def _pooled_metrics(name: str, probs: np.ndarray) -> dict[str, float]:
    """AUC and LogLoss over all evaluation rows pooled: (U, C) probabilities, label 1 in
    column 0 and 0 elsewhere. The labels follow from that layout (no (U * C,) array),
    and `probs` is overwritten (by the log-likelihoods), saving (U, C) temporaries."""
    if probs.ndim != 2 or probs.shape[1] < 2 or probs.shape[0] < 1:
        raise ValueError(f"expected (U, C) probabilities with C >= 2, got shape {probs.shape}")
    if np.isnan(probs).any():
        raise ValueError("expected finite scores, got NaN (did training diverge?)")
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(
            f"expected probabilities in [0, 1], got range [{probs.min():.4g}, {probs.max():.4g}]"
        )
    auc = _auc(probs[:, 0], probs[:, 1:])
    # LogLoss as compute_logloss sums it: the row-major (U * C,) terms, clipped
    p = np.clip(probs, _EPS, 1.0 - _EPS, out=probs)
    positive = np.log(np.ascontiguousarray(p[:, 0]))  # (U,)
    terms = np.log1p(np.negative(p, out=p), out=p)  # (U, C) log(1 - p)
    terms[:, 0] = positive
    return {f"{name}_auc": auc, f"{name}_logloss": float(-np.mean(terms.reshape(-1)))}


def _full_metrics(name: str, ranks: np.ndarray) -> dict[str, float]:
    return {
        f"{name}_full_hr_at_10": compute_hr_at_k(ranks, 10),
        f"{name}_full_ndcg_at_10": compute_ndcg_at_k(ranks, 10),
    }


def __getattr__(name: str):
    # `from ctr.training.metrics import RankingEvaluator` (the plan's home for it) keeps
    # working; it lives in evaluator.py, which imports this module, hence the lazy import
    if name == "RankingEvaluator":
        from ctr.training.evaluator import RankingEvaluator

        return RankingEvaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
