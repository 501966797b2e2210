"""Evaluation without U * C feature rows or (U, I) matrices, on the real ML-100K files.

An EvalSplit holds (U, C) candidate catalogue rows beside the user and item tables;
a batch of candidate rows is gathered when it is scored, and full ranking builds the
exclusion mask of one chunk of users at a time. The checks below: the gathered rows
are exactly those the split used to materialise, the metrics are bit-identical to
those the materialised rows gave, and an evaluator at a larger synthetic shape never
holds U * C rows.
"""

from __future__ import annotations

import logging
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctr.config import DataConfig, load_config
from ctr.data import get_adapter
from ctr.data.dataset import EvalSplit, TabularDataset
from ctr.data.history import history_matrix, strictly_later
from ctr.data.masks import InteractionMask
from ctr.data.movielens import (
    FIELD_ORDER,
    EncodedRatings,
    MovieLensPreprocessor,
    build_eval_split,
    leave_one_out_split,
    read_movielens,
)
from ctr.models import create_model
from ctr.training import build_data
from ctr.training.evaluator import RankingEvaluator
from ctr.training.metrics import (
    ExclusionLists,
    compute_auc,
    compute_hr_at_k,
    compute_logloss,
    compute_ndcg_at_k,
    full_ranks_from_scores,
    rank_of_positive,
)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data" / "ml-100k"
TINY = ["features.embedding_dim=4", "fm.embed_dim=4", "dnn.hidden_units=[16]"]
CONFIGS = {"plain": "deepfm_movielens.yaml", "history": "deepfm_history_movielens.yaml"}

# RankingEvaluator(val, batch_size=4096).evaluate(tiny_deepfm(...)) with 99 sampled
# negatives, recorded when the split still held its U * C materialised rows
# (commit ff1c345); the factorised evaluation must give the same floats, bit for bit.
RECORDED = {
    "plain": {
        "val_hr_at_5": 0.02545068928950159,
        "val_ndcg_at_5": 0.013783901005365903,
        "val_hr_at_10": 0.07104984093319194,
        "val_ndcg_at_10": 0.02838542881695081,
        "val_hr_at_20": 0.15058324496288442,
        "val_ndcg_at_20": 0.048160694633338524,
        "val_later_hr_at_10": 0.0671785028790787,
        "val_later_ndcg_at_10": 0.028343452704837326,
        "val_auc": 0.4755375296764716,
        "val_logloss": 2.545679963870765,
        "val_full_hr_at_10": 0.0010604453870625664,
        "val_full_ndcg_at_10": 0.00035348179568752205,
    },
    "history": {
        "val_hr_at_5": 0.032873806998939555,
        "val_ndcg_at_5": 0.01991919105990328,
        "val_hr_at_10": 0.07635206786850478,
        "val_ndcg_at_10": 0.03360763153781823,
        "val_hr_at_20": 0.15906680805938495,
        "val_ndcg_at_20": 0.054174595424452104,
        "val_later_hr_at_10": 0.07869481765834933,
        "val_later_ndcg_at_10": 0.03367420741570589,
        "val_auc": 0.48987290955569807,
        "val_logloss": 7.545355972089209,
        "val_full_hr_at_10": 0.003181336161187699,
        "val_full_ndcg_at_10": 0.0017331530530194216,
    },
}


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    logging.getLogger("ctr.data.movielens").setLevel(logging.ERROR)
    yield
    logging.getLogger("ctr.data.movielens").setLevel(logging.INFO)


def tiny_deepfm(config, schema) -> torch.nn.Module:
    """A DeepFM with seeded weights drawn wide (std 0.5), so that scores spread out."""
    torch.manual_seed(0)
    model = create_model(config.model_name, schema, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def built(request):
    config = load_config(
        ROOT / "configs" / CONFIGS[request.param], [*TINY, "data.num_eval_negatives=99"]
    )
    _, schema, _, val, _ = build_data(config)
    return request.param, val, tiny_deepfm(config, schema)


# ---------------------------------------------------------------- the gathered rows
def _encoded(history: bool) -> tuple[EncodedRatings, np.ndarray]:
    raw = read_movielens(DATA_DIR)
    ratings = leave_one_out_split(raw.ratings)
    split = ratings["split"].to_numpy()
    pre = MovieLensPreprocessor.fit(ratings[split == "train"], raw.users, raw.items, 6)
    enc = EncodedRatings.from_preprocessor(pre, ratings, FIELD_ORDER)
    enc.later = strictly_later(enc.user_rows, ratings["timestamp"].to_numpy())
    if history:
        codes = enc.item_features["movie_id"].numpy()[enc.item_rows]
        enc.history = history_matrix(enc.user_rows, codes, 20)
    return enc, split


def materialised_rows(enc: EncodedRatings, in_split: np.ndarray, cand: np.ndarray):
    """The U * C rows as build_eval_split used to build them (user-major, positive first)."""
    order = np.argsort(enc.user_rows[in_split], kind="stable")
    split_users = enc.user_rows[in_split][order]
    C = cand.shape[1]
    columns = enc.gather(np.repeat(split_users, C), cand.reshape(-1).astype(np.int64))
    if enc.history is not None:
        history = torch.from_numpy(enc.history[in_split][order])  # (U, L)
        columns["history"] = history.repeat_interleave(C, dim=0)  # (U * C, L)
    labels = np.zeros(cand.size, dtype=np.float32)
    labels[::C] = 1.0
    return TabularDataset(columns, labels)


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
def test_gathered_candidates_are_the_materialised_rows(history: bool):
    enc, split = _encoded(history)
    for name in ("val", "test"):
        ev, _ = build_eval_split(name, enc, split == name, 99, eval_seed=7)
        U, C = ev.num_users, ev.num_candidates
        assert ev.candidate_rows.dtype == np.int32 and ev.candidate_rows.shape == (U, C)
        want = materialised_rows(enc, split == name, ev.candidate_rows)
        fields = [*FIELD_ORDER, *(["history"] if history else [])]
        assert list(want.features) == fields == list(ev.field_order)
        # field by field, the tables hold exactly the columns of a candidate row, each once
        assert set(ev.user_features) | set(ev.item_features) == set(fields)
        for f in fields:
            assert (f in ev.user_features) != (f in ev.item_features), f
        assert ("history" in ev.user_features) == history
        for start, end in [(0, 1), (1, 300), (300, 301), (301, U)]:  # uneven chunks of users
            got = ev.candidate_batch(start, end)
            assert list(got) == fields
            for f in fields:
                assert torch.equal(got[f].long(), want.features[f][start * C : end * C]), f
        materialised = ev.candidates  # built on request only, then kept
        assert ev.candidates is materialised
        assert list(materialised.features) == fields
        for f in fields:
            assert materialised.features[f].dtype == want.features[f].dtype
            assert torch.equal(materialised.features[f], want.features[f]), f
        assert torch.equal(materialised.labels, want.labels)
        np.testing.assert_array_equal(ev.candidate_items, enc.item_ids[ev.candidate_rows])


def test_exclusion_rows_are_the_dense_mask_chunk_by_chunk(built):
    _, val, _ = built
    U, n_items = val.num_users, len(val.item_ids)
    dense = np.zeros((U, n_items), dtype=bool)  # as the evaluator built it, whole
    for u in range(U):
        dense[u, val.excluded_for(u)] = True
    dense[np.arange(U), val.positive_item_index] = False
    assert dense.sum() == len(val.exclude_items) > 0
    lists = ExclusionLists(val)
    for start, end in [(0, 38), (38, 39), (39, 500), (500, U)]:
        np.testing.assert_array_equal(lists.rows(start, end).numpy(), dense[start:end])


# ------------------------------------------------------------------ the metrics
def test_metrics_are_those_the_materialised_rows_gave(built):
    name, val, model = built
    got = RankingEvaluator(val, batch_size=4096).evaluate(model)
    assert got == RECORDED[name]  # bit-identical, not approximately


def test_metrics_equal_the_materialised_path_in_process(built):
    """The old evaluation, step by step: score the materialised rows, labels from the
    dataset, the (U, I) exclusion mask whole. Exact equality, on any machine."""
    _, val, model = built
    U, C = val.num_users, val.num_candidates
    rows = val.candidates  # materialised here, for the reference only
    with torch.inference_mode():
        logits = torch.cat(
            [model(batch).reshape(-1).float() for batch, _ in rows.iter_batches(4096)]
        ).view(U, C)
        scores = torch.cat([s for _, _, s in _catalogue_chunks(val, model)])  # (U, I)
    ranks = rank_of_positive(logits).numpy()
    probs = torch.sigmoid(logits.double()).reshape(-1).numpy()
    labels = rows.labels.numpy()
    dense = np.zeros((U, len(val.item_ids)), dtype=bool)
    dense[np.repeat(np.arange(U), np.diff(val.exclude_indptr)), val.exclude_items] = True
    dense[np.arange(U), val.positive_item_index] = False
    full = full_ranks_from_scores(
        scores, torch.from_numpy(val.positive_item_index), torch.from_numpy(dense)
    ).numpy()
    got = RankingEvaluator(val, batch_size=4096).evaluate(model)
    assert got["val_hr_at_10"] == compute_hr_at_k(ranks, 10)
    assert got["val_ndcg_at_20"] == compute_ndcg_at_k(ranks, 20)
    assert got["val_auc"] == compute_auc(labels, probs)
    assert got["val_logloss"] == compute_logloss(labels, probs)
    assert got["val_full_hr_at_10"] == compute_hr_at_k(full, 10)
    assert got["val_full_ndcg_at_10"] == compute_ndcg_at_k(full, 10)


def _catalogue_chunks(split: EvalSplit, model):
    from ctr.training.scoring import CatalogueScorer

    scorer = CatalogueScorer(split.item_features, chunk_rows=4096)
    return scorer.chunks(model, split.user_features)


def _split_like(split: EvalSplit, **changes) -> EvalSplit:
    """An EvalSplit with `split`'s tables and lists, and `changes` in place of some."""
    fields = dict(
        num_candidates=split.num_candidates,
        user_ids=split.user_ids,
        user_features=split.user_features,
        item_features=split.item_features,
        item_ids=split.item_ids,
        positive_item_index=split.positive_item_index,
        exclude_indptr=split.exclude_indptr,
        exclude_items=split.exclude_items,
        candidate_rows=split.candidate_rows,
        field_order=split.field_order,
    )
    return EvalSplit(split.name, **{**fields, **changes})


def test_evaluator_rejects_candidates_that_do_not_fit_the_split(built):
    _, val, _ = built
    bad = _split_like(val, candidate_rows=val.candidate_rows[:, ::-1].copy())  # positive last
    with pytest.raises(ValueError, match="column 0 of candidate_rows; 943 of 943 users differ"):
        RankingEvaluator(bad)
    with pytest.raises(ValueError, match="field_order to name each column"):
        # a table column no candidate row carries
        _split_like(val, field_order=val.field_order[:-1])


# ------------------------------------------------------------- at a larger shape
def test_synthetic_evaluation_never_holds_the_candidate_rows(monkeypatch):
    """synthetic-200k: 1,385 users x 1,000 candidates, 2,674 items. Every forward pass
    holds at most batch_size rows, the split's materialised rows are never asked for,
    and what the evaluator keeps and the numpy side allocates stay far below the rows."""
    adapter = get_adapter("synthetic-200k", None, DataConfig(dataset="synthetic-200k"))
    _, _, val, _ = adapter.build()
    U, C, n_items = val.num_users, val.num_candidates, len(val.item_ids)
    assert (U, C, n_items) == (1385, 1000, 2674)
    assert val._candidates is None  # nothing built the U * C rows
    row_bytes = sum(  # one materialised candidate row: 64 bytes here
        v[0].numel() * 8 for v in [*val.user_features.values(), *val.item_features.values()]
    )

    def never(self):
        raise AssertionError("the evaluation asked for the materialised candidate rows")

    monkeypatch.setattr(EvalSplit, "candidates", property(never))
    batches: list[int] = []

    def model(batch):  # a fixed score of (user, movie, genres), cheap at any size
        batches.append(batch["user_id"].shape[0])
        movie = (batch["movie_id"] * 7919 % 1009).float() / 1009
        return (movie - (batch["user_id"] % 17).float() / 17).unsqueeze(1)

    batch_size = 65_536
    tracemalloc.start()
    try:
        evaluator = RankingEvaluator(val, batch_size=batch_size)
        metrics = evaluator.evaluate(model)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sampled, full = (
        batches[: math.ceil(U * C / batch_size)],
        batches[math.ceil(U * C / batch_size) :],
    )
    assert max(sampled) == batch_size and sum(sampled) == U * C
    assert max(full) <= batch_size and sum(full) == U * n_items
    assert numpy_peak < U * C * row_bytes / 2  # 24 bytes a candidate: its probability + AUC's
    # what stays: the (U, C) int32 rows, the two tables, the tiled catalogue, the CSR lists
    held = _tensor_bytes({k: v for k, v in vars(evaluator).items() if k != "split"})
    assert held < U * C * row_bytes / 4
    assert _tensor_bytes(vars(val)) < U * C * row_bytes / 8

    # the sampled ranks, from the tables and the candidate rows directly
    movie = val.item_features["movie_id"][torch.from_numpy(val.candidate_rows).long()]  # (U, C)
    users = val.user_features["user_id"].unsqueeze(1)  # (U, 1)
    logits = (movie * 7919 % 1009).float() / 1009 - (users % 17).float() / 17
    ranks = rank_of_positive(logits).numpy()
    assert metrics["val_hr_at_20"] == compute_hr_at_k(ranks, 20)
    assert metrics["val_ndcg_at_10"] == compute_ndcg_at_k(ranks, 10)


def _tensor_bytes(obj, seen=None) -> int:
    """Bytes of the distinct tensors and arrays reachable through dicts and attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


# ------------------------------------------------------------------ serving
def test_recommender_densifies_only_the_requested_users():
    from tests.test_recommender import tiny_recommender

    tiny = tiny_recommender()
    rec, pre, train = tiny.rec, tiny.pre, tiny.train
    U, n_items = len(pre.user_ids), len(pre.item_ids)
    assert isinstance(rec.seen, InteractionMask)
    assert rec.seen.shape == (U + 1, n_items) and rec.seen.nbytes == (U + 1) * -(-n_items // 8)
    dense = np.zeros((U, n_items), dtype=bool)  # the (U, I) matrix it used to hold
    dense[
        pre.user_rows(train["user_id"].to_numpy()), pre.item_rows(train["movie_id"].to_numpy())
    ] = True
    rows = np.array([0, 5, -1, U - 1, 5])  # -1: a user the table does not know
    want = np.concatenate([dense, np.zeros((1, n_items), bool)])[rows]
    np.testing.assert_array_equal(rec.seen.rows(rows), want)
    user = int(pre.user_ids[5])
    top = rec.predict(pd.DataFrame({"user_id": [user], "k": [n_items]}))
    assert len(top) == n_items - dense[5].sum()  # every unseen item, none of the seen
    assert not set(top["movie_id"]) & set(pre.item_ids[dense[5]])
