"""CatalogueScorer: every catalogue item scored per user, in chunks, against a loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctr.training.scoring import CatalogueScorer, forward_logits
from tests.test_metrics import GENRE_LEN, DotModel, make_split


def loop_scores(model, users, items) -> np.ndarray:
    """(U, I) by one forward pass per (user, item) pair."""
    U = next(iter(users.values())).shape[0]
    I = next(iter(items.values())).shape[0]  # noqa: E741  (the catalogue size)
    out = np.zeros((U, I), dtype=np.float32)
    with torch.no_grad():
        for u in range(U):
            for i in range(I):
                batch = {k: v[u : u + 1] for k, v in users.items()}
                batch.update({k: v[i : i + 1] for k, v in items.items()})
                out[u, i] = float(model(batch))
    return out


@pytest.mark.parametrize(
    ("chunk_rows", "max_users", "chunk_users"),
    [
        (1, None, 1),
        (20, None, 1),
        (45, None, 2),
        (100, None, 5),
        (10_000, None, 500),
        (10_000, 7, 7),
    ],
)
def test_scores_equal_a_pair_by_pair_loop_whatever_the_chunking(chunk_rows, max_users, chunk_users):
    split = make_split(num_users=7, num_items=20, seed=2)
    model = DotModel(7, 20, seed=1).eval()
    scorer = CatalogueScorer(split.item_features, chunk_rows=chunk_rows, max_users=max_users)
    assert scorer.chunk_users == chunk_users and scorer.num_items == 20
    got = scorer.scores(model, split.user_features)
    assert got.shape == (7, 20) and got.dtype == torch.float32
    want = loop_scores(model, split.user_features, split.item_features)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_chunks_cover_the_users_in_order_with_bounded_forward_passes():
    split = make_split(num_users=5, num_items=20)
    model = DotModel(5, 20).eval()
    passes: list[int] = []

    def recording(batch):
        n = batch["user_id"].shape[0]
        assert batch["genres"].shape == (n, GENRE_LEN)
        assert set(batch) == {"user_id", "movie_id", "genres"}
        passes.append(n)
        return model(batch)

    scorer = CatalogueScorer(split.item_features, chunk_rows=50)
    spans = [(s, e, tuple(x.shape)) for s, e, x in scorer.chunks(recording, split.user_features)]
    assert spans == [(0, 2, (2, 20)), (2, 4, (2, 20)), (4, 5, (1, 20))]
    assert passes == [40, 40, 20]
    assert not torch.is_inference_mode_enabled()  # the caller's mode is left alone


def test_no_users_give_an_empty_score_table():
    split = make_split()
    scorer = CatalogueScorer(split.item_features)
    empty = {"user_id": torch.zeros(0, dtype=torch.int64)}
    assert scorer.scores(DotModel(5, 20), empty).shape == (0, 20)


def test_bad_tables_users_and_models_are_errors_that_say_what_was_got():
    split = make_split()
    items = split.item_features
    with pytest.raises(ValueError, match="chunk_rows >= 1, got 0"):
        CatalogueScorer(items, chunk_rows=0)
    with pytest.raises(ValueError, match="same number"):
        CatalogueScorer({**items, "genres": items["genres"][:3]})
    with pytest.raises(ValueError, match="at least one item field"):
        CatalogueScorer({})
    scorer = CatalogueScorer(items)
    with pytest.raises(ValueError, match=r"\['movie_id'\] in both"):
        scorer.check_users({"user_id": torch.arange(3), "movie_id": torch.arange(3)})
    with pytest.raises(ValueError, match="same number of rows"):
        scorer.check_users({"user_id": torch.arange(3), "age": torch.arange(2)})
    with pytest.raises(ValueError, match=r"shape \(4, 1\), got \(3, 1\)"):
        forward_logits(lambda b: torch.zeros(3, 1), {}, 4)
