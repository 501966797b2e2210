"""CTR models and their registry.

    from ctr.models import create_model, list_models
    model = create_model("deepfm", schema, config)

A new model is one file with a BaseCTRModel subclass decorated with
`@register_model("name")`, imported below so that it registers.
"""

from __future__ import annotations

from ctr.config import ExperimentConfig
from ctr.data.schema import DatasetSchema
from ctr.errors import CTRError
from ctr.models.attention_deepfm import AttentionDeepFM
from ctr.models.base import MODEL_REGISTRY, BaseCTRModel, register_model
from ctr.models.deepfm import DeepFM
from ctr.models.fm import FM
from ctr.models.lr import LR
from ctr.models.sasrec import SASRec
from ctr.models.xdeepfm import xDeepFM


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODEL_REGISTRY)


def create_model(name: str, schema: DatasetSchema, config: ExperimentConfig) -> BaseCTRModel:
    """Build the registered model `name` for `schema` with `config`."""
    try:
        cls = MODEL_REGISTRY[name]
    except KeyError:
        raise CTRError(f"expected a model name in {list_models()}, got {name!r}") from None
    return cls(schema, config)


__all__ = [
    "FM",
    "LR",
    "MODEL_REGISTRY",
    "AttentionDeepFM",
    "BaseCTRModel",
    "DeepFM",
    "SASRec",
    "create_model",
    "list_models",
    "register_model",
    "xDeepFM",
]
