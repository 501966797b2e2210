"""End to end on the real MovieLens-100K files: load, train DeepFM for 2 epochs, evaluate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ctr.config import build_config
from ctr.data.movielens import MovieLensAdapter
from ctr.models import create_model
from ctr.training import Trainer
from ctr.utils import seed_everything

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_deepfm_trains_two_epochs_on_ml_100k_and_ranks_better_than_chance(tmp_path):
    # The default DeepFM; big batches and no full ranking keep it to about a minute.
    config = build_config(
        {},
        [
            "training.num_epochs=2",
            "training.batch_size=4096",
            "training.full_ranking=false",
            "training.test_full_ranking=false",
        ],
    )
    assert config.model_name == "deepfm"
    adapter = MovieLensAdapter(ROOT / "data/ml-100k", config.data)
    schema, train_ds, val_ds, test_ds = adapter.build()
    assert schema.num_fields == 7
    assert len(val_ds) == len(test_ds) == 943 * 1000  # 1 + 999 candidates per user

    seed_everything(config.seed)
    model = create_model("deepfm", schema, config)
    trainer = Trainer(
        model, schema, config, train_ds, val_ds, test_ds, checkpoint_dir=tmp_path / "ckpt"
    )
    summary = trainer.fit()

    assert [h["epoch"] for h in trainer.history] == [1, 2]
    losses = [h["train_loss"] for h in trainer.history]
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0]
    assert all(h["val_auc"] > 0.5 for h in trainer.history)
    assert summary["test_auc"] > 0.5
    assert 0.0 < summary["test_ndcg_at_10"] <= summary["test_hr_at_10"] <= 1.0
    assert (tmp_path / "ckpt" / "best.pt").is_file()
