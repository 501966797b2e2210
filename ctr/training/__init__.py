"""Training and evaluation: the Trainer, callbacks, metrics."""

from ctr.training.callbacks import Callback, TrainingContext
from ctr.training.trainer import (
    Trainer,
    TrainResult,
    build_data,
    evaluate_checkpoint,
    fit,
    resolve_device,
)

__all__ = [
    "Callback",
    "TrainResult",
    "Trainer",
    "TrainingContext",
    "build_data",
    "evaluate_checkpoint",
    "fit",
    "resolve_device",
]
