"""Trainer callbacks: the hooks a tracking service (e.g. MLflow) plugs into.

The trainer calls, in order:

    on_train_begin(context)             once, before the first epoch
    on_epoch_end(epoch, metrics)        after each epoch's validation (epoch is 1-based)
    on_checkpoint(epoch, path, is_best) after each checkpoint is written
    on_train_end(summary)               once, after the test evaluation of the best epoch
    on_exception(exc)                   instead of on_train_end if training raises
                                        (KeyboardInterrupt included), then the error propagates

`metrics` per epoch: train_loss, lr, epoch_seconds and the val_* metrics
(val_auc, val_logloss, val_hr_at_{5,10,20}, val_ndcg_at_{5,10,20},
val_full_hr_at_10, val_full_ndcg_at_10).

`summary`: best_epoch, epochs_run, stopped_early, seconds_per_epoch,
best_checkpoint, last_checkpoint, the best_val_* metrics (the val metrics of
the best epoch) and the test_* metrics of the best epoch's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ctr.config import ExperimentConfig
    from ctr.data.dataset import EvalSplit
    from ctr.data.schema import DatasetSchema


@dataclass
class TrainingContext:
    """What a callback may want to record when training starts."""

    config: ExperimentConfig
    schema: DatasetSchema
    model: torch.nn.Module
    num_params: int
    device: str
    checkpoint_dir: Path
    val_split: EvalSplit | None = None
    test_split: EvalSplit | None = None
    # JSON-able encoders and side-feature tables of the data set (adapter-specific)
    preprocessor: Any = None
    # the training interactions (raw user_id, movie_id) of the data set, if it has them
    train_interactions: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class: every hook is a no-op; override the ones you need."""

    def on_train_begin(self, context: TrainingContext) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, epoch: int, path: Path, is_best: bool) -> None:
        pass

    def on_train_end(self, summary: dict[str, Any]) -> None:
        pass

    def on_exception(self, exc: BaseException) -> None:
        pass
