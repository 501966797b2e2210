"""Data: schema, encoders, columnar datasets, samplers and data-set adapters.

Adapters are looked up by name:

    adapter = get_adapter("movielens-100k", "data/ml-100k", DataConfig(), FeatureConfig())
    schema, train_ds, val_ds, test_ds = adapter.build()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctr.data.dataset import EvalSplit, TabularDataset
from ctr.data.movielens import DataNotFoundError, MovieLensAdapter, MovieLensPreprocessor
from ctr.data.paths import resolve_data_dir
from ctr.data.sampling import NegativeSamplingTrainSet
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.data.transforms import LabelEncoder, MinMaxScaler, MultiHotEncoder, encoder_from_dict
from ctr.errors import CTRError

_ADAPTERS: dict[str, type] = {}


def register_adapter(name: str) -> Callable[[type], type]:
    """Class decorator: make an adapter available to `get_adapter(name, ...)`."""

    def decorator(cls: type) -> type:
        if name in _ADAPTERS and _ADAPTERS[name] is not cls:
            raise ValueError(f"an adapter named {name!r} is already registered")
        _ADAPTERS[name] = cls
        return cls

    return decorator


def available_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(
    name: str,
    data_dir: str | Path | None = None,
    data_config: Any = None,
    feature_config: Any = None,
):
    """Instantiate the adapter registered as `name`.

    data_dir defaults to data_config.data_dir; data_config and feature_config
    to their defaults (ctr.config.DataConfig / FeatureConfig).
    """
    if name not in _ADAPTERS:
        raise CTRError(
            f"unknown data set {name!r}; known data sets: {', '.join(available_adapters())}"
        )
    from ctr.config import DataConfig, FeatureConfig

    data_config = data_config if data_config is not None else DataConfig(dataset=name)
    feature_config = feature_config if feature_config is not None else FeatureConfig()
    if data_dir is None:
        data_dir = data_config.data_dir
    return _ADAPTERS[name](data_dir, data_config, feature_config)


register_adapter("movielens-100k")(MovieLensAdapter)

__all__ = [
    "DataNotFoundError",
    "DatasetSchema",
    "EvalSplit",
    "FeatureType",
    "FieldSchema",
    "LabelEncoder",
    "MinMaxScaler",
    "MovieLensAdapter",
    "MovieLensPreprocessor",
    "MultiHotEncoder",
    "NegativeSamplingTrainSet",
    "TabularDataset",
    "available_adapters",
    "encoder_from_dict",
    "get_adapter",
    "register_adapter",
    "resolve_data_dir",
]
