"""What a tracked run stores besides params and metrics: the files and the model's
packaging.

    pip_requirements, ctr_package_dir, model_signature   how a ctr model is logged
    silence_pickle_warnings                               MLflow's pickle warnings off
    eval_candidates_npz                                   data/eval_candidates.npz
    plot_training_curves                                  plots/training_curves.png

The artifact paths are the constants below; experiments.tracking.MLflowCallback
writes them (see its module docstring for the whole list).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

MODEL_NAME = "model"  # name of the logged PyTorch model of every run
CONFIG_ARTIFACT = "config/config.yaml"
SCHEMA_ARTIFACT = "data/schema.json"
ENCODERS_ARTIFACT = "data/encoders.json"
CANDIDATES_ARTIFACT = "data/eval_candidates.npz"
CURVES_ARTIFACT = "plots/training_curves.png"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"


# What MLflow logs each time a model is saved with pickle (mlflow.pytorch) or
# CloudPickle (mlflow.pyfunc with a Python object). The project chose these formats
# on purpose (see DESIGN.md: `pt2` loses the ctr class and the dict-input pyfunc), so
# the warning tells the user nothing they can act on. Matched by message text, so any
# other MLflow warning still shows.
_PICKLE_WARNINGS = (
    "Saving pytorch model by Pickle or CloudPickle format requires exercising caution",
    "causes it to be serialized using CloudPickle",
)
_PICKLE_WARNING_LOGGERS = ("mlflow.pytorch", "mlflow.pyfunc")


class _DropPickleWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _PICKLE_WARNINGS)


@contextmanager
def silence_pickle_warnings() -> Iterator[None]:
    """Within the block, drop MLflow's pickle / CloudPickle serialization warnings
    (and only those): ctr logs its models in these formats by design."""
    drop = _DropPickleWarnings()
    loggers = [logging.getLogger(name) for name in _PICKLE_WARNING_LOGGERS]
    for log in loggers:
        log.addFilter(drop)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(drop)


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged ctr model (explicit: inference takes ~10 s)."""
    packages = ["torch", "numpy", "pandas", "pydantic", "pyyaml", "scikit-learn"]
    reqs = []
    for name in packages:
        version = metadata.version(name).split("+")[0]  # 2.13.0+cpu -> 2.13.0
        reqs.append(f"{name}=={version}")
    return reqs


def ctr_package_dir() -> Path:
    """The directory of the `ctr` package, copied into every logged model."""
    import ctr

    return Path(ctr.__file__).resolve().parent


def model_signature(schema):
    """Tensor signature of a ctr model: one named tensor per field -> logits (B, 1)."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from ctr.data.schema import FeatureType

    inputs = []
    for f in schema.fields.values():
        dtype = np.dtype("float32") if f.feature_type is FeatureType.DENSE else np.dtype("int64")
        shape = (-1, f.max_length) if f.feature_type is FeatureType.SEQUENCE else (-1,)
        inputs.append(TensorSpec(dtype, shape, f.name))
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, 1), "logits")])
    return ModelSignature(inputs=Schema(inputs), outputs=outputs)


def eval_candidates_npz(val_split, test_split) -> bytes:
    """The evaluation candidates as a compressed .npz (raw ids, column 0 = positive).

    Arrays: {val,test}_user_ids (U,) and {val,test}_candidate_items (U, C).
    """
    import numpy as np

    arrays = {}
    for name, split in (("val", val_split), ("test", test_split)):
        if split is None:
            continue
        arrays[f"{name}_user_ids"] = np.asarray(split.user_ids)
        arrays[f"{name}_candidate_items"] = np.asarray(split.candidate_items)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def plot_training_curves(history: Sequence[dict[str, float]]):
    """A matplotlib figure of loss, AUC/LogLoss and ranking metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) for h in history]
    panels = [
        ("loss", ["train_loss", "val_logloss"]),
        ("AUC", ["val_auc"]),
        ("hit rate", ["val_hr_at_5", "val_hr_at_10", "val_hr_at_20", "val_full_hr_at_10"]),
        ("NDCG", ["val_ndcg_at_5", "val_ndcg_at_10", "val_ndcg_at_20", "val_full_ndcg_at_10"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [math.nan if v is None else v for v in values], "o-", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
