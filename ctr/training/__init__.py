"""Training and evaluation: the Trainer, callbacks, metrics, and `fit`."""

from ctr.training.callbacks import Callback, TrainingContext
from ctr.training.device import resolve_device
from ctr.training.run import (
    BuiltData,
    TrainResult,
    build_data,
    build_trainer,
    evaluate_checkpoint,
    fit,
)
from ctr.training.trainer import Trainer

__all__ = [
    "BuiltData",
    "Callback",
    "TrainResult",
    "Trainer",
    "TrainingContext",
    "build_data",
    "build_trainer",
    "evaluate_checkpoint",
    "fit",
    "resolve_device",
]
