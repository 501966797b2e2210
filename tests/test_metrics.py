"""Metrics and the ranking evaluator on small hand-built EvalSplits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from ctr.data.dataset import EvalSplit, TabularDataset
from ctr.training.baselines import PopularityModel
from ctr.training.evaluator import RankingEvaluator
from ctr.training.metrics import (
    compute_auc,
    compute_hr_at_k,
    compute_logloss,
    compute_ndcg_at_k,
    evaluate_scores,
    rank_of_positive,
)

GENRE_LEN = 3
NUM_GENRES = 6


def make_split(
    num_users: int = 5,
    num_items: int = 20,
    num_candidates: int = 8,
    seed: int = 0,
    name: str = "val",
) -> EvalSplit:
    """U users, I catalogue items, C candidates per user; fields user_id, movie_id, genres.

    User u (encoded u + 1) has 2-5 known interactions; the last is the held-out
    positive, the others are excluded from its full ranking. movie_id encodes
    catalogue row i as i + 1, except row 0, an item unseen in training (index 0).
    """
    rng = np.random.default_rng(seed)
    U, n_items, C = num_users, num_items, num_candidates
    item_ids = np.arange(100, 100 + n_items)  # raw ids
    movie_index = np.arange(n_items) + 1
    movie_index[0] = 0
    genres = rng.integers(0, NUM_GENRES, size=(n_items, GENRE_LEN))
    item_features = {
        "movie_id": torch.as_tensor(movie_index, dtype=torch.int64),
        "genres": torch.as_tensor(genres, dtype=torch.int64),
    }
    user_features = {"user_id": torch.arange(1, U + 1, dtype=torch.int64)}

    positives, indptr, excluded, cand_rows = [], [0], [], []
    for _ in range(U):
        known = rng.choice(n_items, size=int(rng.integers(2, 6)), replace=False)
        positive, others = known[-1], np.sort(known[:-1])
        pool = np.setdiff1d(np.arange(n_items), known)
        negatives = rng.choice(pool, size=C - 1, replace=False)
        positives.append(positive)
        excluded.extend(others.tolist())
        indptr.append(len(excluded))
        cand_rows.append(np.concatenate([[positive], negatives]))
    cand_rows = np.stack(cand_rows)  # (U, C) catalogue rows
    flat = cand_rows.reshape(-1)
    candidates = TabularDataset(
        {
            "user_id": np.repeat(np.arange(1, U + 1), C),
            "movie_id": movie_index[flat],
            "genres": genres[flat],
        },
        np.tile(np.r_[1.0, np.zeros(C - 1)], U),
    )
    return EvalSplit(
        name=name,
        candidates=candidates,
        num_candidates=C,
        user_ids=np.arange(1000, 1000 + U),
        candidate_items=item_ids[cand_rows],
        user_features=user_features,
        item_features=item_features,
        item_ids=item_ids,
        positive_item_index=np.asarray(positives),
        exclude_indptr=np.asarray(indptr),
        exclude_items=np.asarray(excluded, dtype=np.int64),
    )


class DotModel(torch.nn.Module):
    """logit = <user emb, movie emb + mean genre emb> + movie bias."""

    def __init__(self, num_users: int, num_items: int, dim: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.user = torch.nn.Embedding(num_users + 1, dim)
        self.movie = torch.nn.Embedding(num_items + 1, dim)
        self.genre = torch.nn.Embedding(NUM_GENRES, dim)
        self.bias = torch.nn.Embedding(num_items + 1, 1)
        self.dropout = torch.nn.Dropout(0.5)  # makes train vs eval mode visible

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        item = self.movie(batch["movie_id"]) + self.genre(batch["genres"]).mean(1)  # (B, D)
        user = self.dropout(self.user(batch["user_id"]))  # (B, D)
        return (user * item).sum(-1, keepdim=True) + self.bias(batch["movie_id"])  # (B, 1)


class TableModel(torch.nn.Module):
    """logit = table[user_id, movie_id]: scores set by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.table[batch["user_id"], batch["movie_id"]].unsqueeze(-1)  # (B, 1)


def catalogue_table(split: EvalSplit, scores: np.ndarray) -> torch.Tensor:
    """(U + 1, V) table from per-user catalogue scores (U, I) for TableModel."""
    U = split.num_users
    movie_index = split.item_features["movie_id"].numpy()
    table = torch.zeros(U + 1, int(movie_index.max()) + 1)
    table[1:, torch.as_tensor(movie_index)] = torch.as_tensor(scores, dtype=torch.float32)
    return table


def brute_force_full_ranks(split: EvalSplit, model: torch.nn.Module) -> np.ndarray:
    """Per-user, per-item Python loop: rank among non-excluded items, ties against."""
    model.eval()
    ranks = []
    with torch.no_grad():
        for u in range(split.num_users):
            scores = []
            for i in range(len(split.item_ids)):
                batch = {k: v[u : u + 1] for k, v in split.user_features.items()}
                batch.update({k: v[i : i + 1] for k, v in split.item_features.items()})
                scores.append(float(model(batch)))
            pos = split.positive_item_index[u]
            skip = set(split.excluded_for(u).tolist())
            ranks.append(
                sum(
                    1
                    for i, s in enumerate(scores)
                    if i != pos and i not in skip and s >= scores[pos]
                )
            )
    return np.asarray(ranks)


# --- HR / NDCG / rank -------------------------------------------------------------


def test_hr_and_ndcg_hand_computed_at_boundaries() -> None:
    ranks = np.array([0, 9, 10])  # rank 0, rank K-1, rank K for K = 10
    assert compute_hr_at_k(ranks, 10) == pytest.approx(2 / 3)
    assert compute_ndcg_at_k(ranks, 10) == pytest.approx((1.0 + 1.0 / math.log2(11) + 0.0) / 3)
    assert compute_hr_at_k([0], 1) == 1.0 and compute_ndcg_at_k([0], 1) == 1.0
    assert compute_hr_at_k([1], 1) == 0.0 and compute_ndcg_at_k([1], 1) == 0.0
    assert compute_ndcg_at_k(torch.tensor([2]), 5) == pytest.approx(0.5)  # 1/log2(4)


def test_rank_of_positive_ties_count_against_the_positive() -> None:
    scores = torch.tensor(
        [
            [1.0, 1.0, 1.0, 0.5],  # tied with two negatives -> rank 2
            [0.3, 0.1, 0.5, 0.2],  # one negative above -> rank 1
            [0.9, 0.1, 0.5, 0.2],  # best -> rank 0
            [0.0, 0.1, 0.5, 0.2],  # worst -> rank 3
        ]
    )
    assert rank_of_positive(scores).tolist() == [2, 1, 0, 3]
    assert rank_of_positive(scores, positive_col=2).tolist() == [2, 0, 1, 0]


def test_metric_input_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        compute_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="at least one row"):
        compute_logloss([], [])
    with pytest.raises(ValueError, match="both classes"):
        compute_auc([1, 1], [0.2, 0.4])
    with pytest.raises(ValueError, match="probabilities"):
        compute_logloss([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError, match="k >= 1"):
        compute_hr_at_k([0], 0)
    with pytest.raises(ValueError, match="shape"):
        rank_of_positive(torch.zeros(3))


@pytest.mark.parametrize("pos_rate", [0.001, 0.3, 0.9])  # both branches: P < N and P > N
def test_auc_and_logloss_equal_sklearn(pos_rate: float) -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    labels = (rng.random(n) < pos_rate).astype(np.float64)
    labels[:2] = [0.0, 1.0]
    scores = np.round(rng.random(n) * 0.5 + labels * 0.3, 2)  # many ties, across classes
    assert compute_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)  # scores of 0.0 occur: the clip matters
    assert compute_logloss(labels, scores) == pytest.approx(log_loss(labels, clipped), rel=1e-12)
    t = torch.as_tensor(scores)
    assert compute_auc(torch.as_tensor(labels), t) == compute_auc(labels, scores)


def test_auc_counts_ties_as_one_half() -> None:
    assert compute_auc([1, 0, 0], [0.5, 0.5, 0.1]) == 0.75
    assert compute_auc([1, 1, 0], [0.5, 0.2, 0.5]) == 0.25
    assert compute_auc([0, 1], [0.9, 0.1]) == 0.0


def test_logloss_clips_probabilities() -> None:
    got = compute_logloss([1, 0], [0.0, 0.0])
    assert got == pytest.approx((-math.log(1e-7) - math.log(1 - 1e-7)) / 2)


# --- RankingEvaluator ---------------------------------------------------------------


def expected_keys(name: str, full: bool) -> set[str]:
    keys = {f"{name}_{m}_at_{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)}
    keys |= {f"{name}_auc", f"{name}_logloss"}
    if full:
        keys |= {f"{name}_full_hr_at_10", f"{name}_full_ndcg_at_10"}
    return keys


def test_perfect_scorer() -> None:
    split = make_split()
    U, n_items = split.num_users, len(split.item_ids)
    scores = np.zeros((U, n_items))
    scores[np.arange(U), split.positive_item_index] = 5.0
    evaluator = RankingEvaluator(split, batch_size=16)
    metrics = evaluator.evaluate(TableModel(catalogue_table(split, scores)))
    assert set(metrics) == expected_keys("val", full=True)
    for key, value in metrics.items():
        if key != "val_logloss":
            assert value == 1.0, key
    assert evaluator.last_seconds is not None and evaluator.last_seconds > 0


def test_worst_scorer() -> None:
    split = make_split(num_users=4, num_items=40, num_candidates=15, name="test")
    U, n_items = split.num_users, len(split.item_ids)
    scores = np.ones((U, n_items))
    scores[np.arange(U), split.positive_item_index] = -5.0
    metrics = RankingEvaluator(split).evaluate(TableModel(catalogue_table(split, scores)))
    assert set(metrics) == expected_keys("test", full=True)
    assert metrics["test_hr_at_10"] == 0.0 and metrics["test_ndcg_at_10"] == 0.0
    assert metrics["test_hr_at_5"] == 0.0
    assert metrics["test_hr_at_20"] == 1.0  # C = 15 < 20: everything is a hit
    assert metrics["test_ndcg_at_20"] == pytest.approx(1.0 / math.log2(14 + 2))
    assert metrics["test_auc"] == 0.0
    assert metrics["test_full_hr_at_10"] == 0.0


def test_tied_scores_rank_the_positive_last() -> None:
    split = make_split()
    constant = lambda batch: torch.zeros(batch["user_id"].shape[0], 1)  # noqa: E731
    metrics = RankingEvaluator(split).evaluate(constant)
    # every candidate ties: the positive ranks C - 1 = 7
    assert metrics["val_hr_at_5"] == 0.0
    assert metrics["val_hr_at_10"] == 1.0
    assert metrics["val_ndcg_at_10"] == pytest.approx(1.0 / math.log2(7 + 2))
    assert metrics["val_auc"] == 0.5
    assert metrics["val_logloss"] == pytest.approx(math.log(2))
    assert metrics["val_full_hr_at_10"] == 0.0  # ranks I - 1 - |excluded| >= 14


def test_auc_and_logloss_are_pooled_not_per_batch() -> None:
    split = make_split(num_users=6, num_candidates=8)
    model = DotModel(6, 20, seed=1)
    rows = len(split.candidates)
    small = RankingEvaluator(split, batch_size=5, full_ranking=False).evaluate(model)
    whole = RankingEvaluator(split, batch_size=rows, full_ranking=False).evaluate(model)
    assert small == whole
    assert set(small) == expected_keys("val", full=False)

    model.eval()
    with torch.no_grad():
        logits = model(split.candidates.features).reshape(-1).double()
    probs = torch.sigmoid(logits).numpy()
    labels = split.candidates.labels.numpy()
    assert small["val_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert small["val_logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-6)
    # and it differs from an average of per-batch AUCs over the same rows
    per_batch = np.mean(
        [roc_auc_score(labels[s : s + 16], probs[s : s + 16]) for s in range(0, rows, 16)]
    )
    assert per_batch != pytest.approx(small["val_auc"], abs=1e-9)
    ranks = rank_of_positive(logits.reshape(6, 8)).numpy()
    assert small["val_hr_at_5"] == compute_hr_at_k(ranks, 5)
    assert small["val_ndcg_at_5"] == compute_ndcg_at_k(ranks, 5)


@pytest.mark.parametrize("batch_size", [7, 45, 100_000])  # 1 user/chunk, 2 (+ a partial), all
def test_full_ranking_matches_brute_force(batch_size: int) -> None:
    split = make_split(num_users=5, num_items=20, seed=3)
    model = DotModel(5, 20, seed=2)
    metrics = RankingEvaluator(split, batch_size=batch_size).evaluate(model)
    ranks = brute_force_full_ranks(split, model)
    assert metrics["val_full_hr_at_10"] == compute_hr_at_k(ranks, 10)
    assert metrics["val_full_ndcg_at_10"] == pytest.approx(compute_ndcg_at_k(ranks, 10))
    assert len(set(ranks.tolist())) > 1  # the model separates users: a real check


def test_excluded_items_do_not_lower_the_rank() -> None:
    split = make_split(seed=4)
    U, n_items = split.num_users, len(split.item_ids)
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 0, size=(U, n_items))
    scores[np.arange(U), split.positive_item_index] = 1.0
    for u in range(U):
        scores[u, split.excluded_for(u)] = 10.0  # above the positive, but excluded
    model = TableModel(catalogue_table(split, scores))
    metrics = RankingEvaluator(split, batch_size=40).evaluate(model)
    assert metrics["val_full_hr_at_10"] == 1.0
    assert metrics["val_full_ndcg_at_10"] == 1.0
    # a non-excluded item tied with the positive still ranks above it
    scores[
        0,
        np.setdiff1d(np.arange(n_items), [*split.excluded_for(0), split.positive_item_index[0]])[0],
    ] = 1.0
    metrics = RankingEvaluator(split).evaluate(TableModel(catalogue_table(split, scores)))
    assert metrics["val_full_ndcg_at_10"] == pytest.approx((4 + 1 / math.log2(3)) / 5)


def test_model_mode_is_restored_and_callables_are_accepted() -> None:
    split = make_split()
    model = DotModel(5, 20)
    evaluator = RankingEvaluator(split, batch_size=32)

    model.train()
    seen_modes = []
    model.register_forward_pre_hook(lambda m, args: seen_modes.append(m.training))
    first = evaluator.evaluate(model)
    assert seen_modes and not any(seen_modes)  # scored in eval mode (dropout off)
    assert model.training and model.dropout.training

    model.eval()
    assert evaluator.evaluate(model) == first
    assert not model.training

    model.train()
    model.dropout.eval()  # a submodule kept frozen stays so
    evaluator.evaluate(model)
    assert model.training and not model.dropout.training

    model.eval()
    assert evaluator.evaluate(lambda batch: model(batch)) == first


def test_full_ranking_batches_carry_exactly_the_schema_fields() -> None:
    split = make_split()
    model = DotModel(5, 20)
    model.eval()
    seen: list[tuple[set[str], int]] = []

    def recording(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = batch["user_id"].shape[0]
        assert all(v.shape[0] == n for v in batch.values())
        assert batch["genres"].shape == (n, GENRE_LEN)
        seen.append((set(batch), n))
        return model(batch)

    RankingEvaluator(split, batch_size=50).evaluate(recording)
    assert all(keys == {"user_id", "movie_id", "genres"} for keys, _ in seen)
    # 40 sampled rows in one batch, then 5 users * 20 items in chunks of 2 users
    assert [n for _, n in seen] == [40, 40, 40, 20]


def test_evaluate_scores_matches_the_evaluator() -> None:
    split = make_split(seed=5)
    model = DotModel(5, 20, seed=3)
    model.eval()
    with torch.no_grad():
        sampled = model(split.candidates.features).reshape(-1).numpy()
        full = np.stack(
            [
                model(
                    {
                        "user_id": split.user_features["user_id"][u].repeat(20),
                        **split.item_features,
                    }
                )
                .reshape(-1)
                .numpy()
                for u in range(5)
            ]
        )
    got = evaluate_scores(split, sampled, full)
    want = RankingEvaluator(split, batch_size=13).evaluate(model)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6), k


def test_evaluator_rejects_bad_inputs() -> None:
    split = make_split()
    with pytest.raises(ValueError, match="batch_size"):
        RankingEvaluator(split, batch_size=0)
    with pytest.raises(ValueError, match=r"shape \(8, 1\)"):
        RankingEvaluator(split, batch_size=8).evaluate(lambda b: torch.zeros(3, 1))
    nan = lambda b: torch.full((b["user_id"].shape[0], 1), float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        RankingEvaluator(split).evaluate(nan)


# --- PopularityModel ----------------------------------------------------------------


def test_popularity_model_orders_items_by_count() -> None:
    model = PopularityModel.from_interactions(np.array([1, 1, 1, 2, 3, 3, 0, 0, 0, 0]), 5)
    logits = model({"movie_id": torch.tensor([0, 1, 2, 3, 4])})
    assert logits.shape == (5, 1)
    assert model.popularity.tolist() == [0.0, 3.0, 1.0, 2.0, 0.0]  # index 0 counts as 0
    assert logits[1, 0] == 0.0  # the most popular item: probability 0.5
    order = logits.reshape(-1).argsort(descending=True).tolist()
    assert order[:3] == [1, 3, 2]
    assert logits[0, 0] == logits[4, 0] < logits[2, 0]
    assert list(model.parameters()) == []


def test_popularity_model_in_the_evaluator() -> None:
    split = make_split(seed=6)
    counts = np.arange(21) * 10  # encoded movie v was seen 10 v times
    metrics = RankingEvaluator(split).evaluate(PopularityModel(counts))
    movie = split.candidates.features["movie_id"].reshape(5, 8).numpy()
    ranks = (movie >= movie[:, :1]).sum(1) - 1  # more popular = larger index
    assert metrics["val_hr_at_5"] == compute_hr_at_k(ranks, 5)
    assert metrics["val_ndcg_at_10"] == pytest.approx(compute_ndcg_at_k(ranks, 10))
    labels = split.candidates.labels.numpy()
    assert metrics["val_auc"] == pytest.approx(roc_auc_score(labels, movie.reshape(-1)))


def test_eval_split_length_is_its_evaluation_rows():
    split = make_split(num_users=5, num_candidates=8)
    assert len(split) == len(split.candidates) == 5 * 8  # users x candidates
