"""From a config to a trained model: build the data, the model and the Trainer.

    result = fit(load_config("configs/deepfm_movielens.yaml"))
    result.summary["test_ndcg_at_10"], result.model

`build_trainer` is the wiring `fit` runs before training, for callers that want
the Trainer itself (to train one epoch at a time, or to share one data build
among several trainers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ctr.config import ExperimentConfig
from ctr.data import get_adapter, resolve_data_dir
from ctr.data.dataset import EvalSplit
from ctr.data.schema import DatasetSchema
from ctr.errors import CTRError
from ctr.models import create_model
from ctr.training import distributed
from ctr.training.callbacks import Callback
from ctr.training.device import resolve_device
from ctr.training.evaluator import RankingEvaluator
from ctr.training.trainer import Trainer
from ctr.utils import load_checkpoint, seed_everything


@dataclass
class TrainResult:
    """What `fit` returns: the best model and everything needed to log or serve it."""

    model: torch.nn.Module
    schema: DatasetSchema
    config: ExperimentConfig
    summary: dict[str, Any]
    history: list[dict[str, float]]
    preprocessor: Any = None
    train_interactions: Any = None  # the adapter's training split (raw user_id, movie_id)
    val_split: Any = None
    test_split: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class BuiltData(NamedTuple):
    """What `build_data` returns; unpacks as (adapter, schema, train_ds, val_ds, test_ds)."""

    adapter: Any
    schema: DatasetSchema
    train_ds: Any  # NegativeSamplingTrainSet
    val_ds: EvalSplit
    test_ds: EvalSplit


def build_data(config: ExperimentConfig) -> BuiltData:
    """(adapter, schema, train_ds, val_ds, test_ds) for the config's data set."""
    adapter = get_adapter(
        config.data.dataset,
        resolve_data_dir(config.data.data_dir),
        config.data,
        config.features,
        history_config=config.history,
    )
    schema, train_ds, val_ds, test_ds = adapter.build()
    return BuiltData(adapter, schema, train_ds, val_ds, test_ds)


def build_trainer(
    config: ExperimentConfig,
    callbacks: list[Callback] | None = None,
    checkpoint_dir: str | Path | None = None,
    data: BuiltData | None = None,
) -> tuple[Trainer, Any]:
    """The Trainer `fit` trains for `config`, and the data set's adapter.

    The model is created right after `seed_everything(config.seed)`, so its
    initial weights depend on the seed alone. `data` (what `build_data(config)`
    returns) skips building the data again, e.g. for several trainers on one
    data set; by default it is built here.
    """
    adapter, schema, train_ds, val_ds, test_ds = build_data(config) if data is None else data
    seed_everything(config.seed)
    model = create_model(config.model_name, schema, config)
    trainer = Trainer(
        model,
        schema,
        config,
        train_ds,
        val_ds,
        test_ds,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        preprocessor=getattr(adapter, "preprocessor", None),
        train_interactions=getattr(adapter, "train_interactions", None),
    )
    return trainer, adapter


def fit(
    config: ExperimentConfig,
    callbacks: list[Callback] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Build the data and model for `config`, train, and return the best model.

    Under torchrun every rank calls this: it joins the job's process group for
    the training (ctr.training.distributed), and every rank returns rank 0's
    summary; the other ranks' `model` holds the last epoch's weights.
    """
    device = resolve_device(config.training.device)
    with distributed.process_group(device):
        trainer, adapter = build_trainer(config, callbacks, checkpoint_dir)
        summary = trainer.fit()
    return TrainResult(
        model=trainer.model,
        schema=trainer.schema,
        config=config,
        summary=summary,
        history=trainer.history,
        preprocessor=getattr(adapter, "preprocessor", None),
        train_interactions=trainer.train_interactions,
        val_split=trainer.val_ds,
        test_split=trainer.test_ds,
    )


def evaluate_checkpoint(path: str | Path, split: str = "test") -> dict[str, float]:
    """Rebuild the data and model stored in a checkpoint and evaluate one split."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    state = load_checkpoint(path, "cpu", required=("config", "schema", "model_state"))
    config = ExperimentConfig.model_validate(state["config"])
    _, schema, _, val_ds, test_ds = build_data(config)
    saved_schema = DatasetSchema.from_dict(state["schema"])
    if saved_schema != schema:
        raise CTRError(
            f"checkpoint {path} was trained on a different schema than the data builds now "
            f"({saved_schema.field_names} vs {schema.field_names}); were the data files changed?"
        )
    model = create_model(config.model_name, schema, config)
    model.load_state_dict(state["model_state"])
    device = resolve_device(config.training.device)
    evaluator = RankingEvaluator(
        val_ds if split == "val" else test_ds,
        batch_size=config.training.eval_batch_size,
        full_ranking=True,
        device=device,
    )
    return evaluator.evaluate(model.to(device))
