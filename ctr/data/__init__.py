"""Data: schema, encoders, columnar datasets, samplers and data-set adapters.

Adapters are looked up by name:

    adapter = get_adapter("movielens-100k", "data/ml-100k", DataConfig(), FeatureConfig())
    schema, train_ds, val_ds, test_ds = adapter.build()

Registered: movielens-100k, movielens-1m, movielens-20m (the GroupLens files;
`ctr data download NAME` fetches them), synthetic and synthetic-<N> (generated,
e.g. synthetic-1m). A family (`register_adapter_family`) answers every name
with its prefix and gets the name as `name=`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ctr.data.dataset import EvalSplit, TabularDataset
from ctr.data.movielens import (
    DataNotFoundError,
    LeaveOneOutAdapter,
    MovieLens1MAdapter,
    MovieLens20MAdapter,
    MovieLensAdapter,
    MovieLensPreprocessor,
)
from ctr.data.paths import resolve_data_dir
from ctr.data.sampling import NegativeSamplingTrainSet
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.data.synthetic import SyntheticAdapter, generate_interactions
from ctr.data.transforms import LabelEncoder, MinMaxScaler, MultiHotEncoder, encoder_from_dict
from ctr.errors import CTRError

_ADAPTERS: dict[str, type] = {}
_FAMILIES: dict[str, type] = {}  # name prefix -> adapter class taking name=


def register_adapter(name: str) -> Callable[[type], type]:
    """Class decorator: make an adapter available to `get_adapter(name, ...)`."""

    def decorator(cls: type) -> type:
        if name in _ADAPTERS and _ADAPTERS[name] is not cls:
            raise ValueError(f"an adapter named {name!r} is already registered")
        _ADAPTERS[name] = cls
        return cls

    return decorator


def register_adapter_family(prefix: str, cls: type) -> None:
    """Make `cls(..., name=NAME)` answer every `get_adapter(NAME)` where NAME starts
    with `prefix` (e.g. "synthetic-" for synthetic-100k, synthetic-5m)."""
    _FAMILIES[prefix] = cls


def available_adapters() -> list[str]:
    """The registered names, then one `<prefix><size>` per family."""
    return sorted(_ADAPTERS) + [f"{prefix}<size>" for prefix in sorted(_FAMILIES)]


def _adapter_class(name: str) -> Callable[..., Any] | None:
    if name in _ADAPTERS:
        return _ADAPTERS[name]
    for prefix, cls in _FAMILIES.items():
        if name.startswith(prefix):
            return partial(cls, name=name)
    return None


def get_adapter(
    name: str,
    data_dir: str | Path | None = None,
    data_config: Any = None,
    feature_config: Any = None,
    history_config: Any = None,
):
    """Instantiate the adapter registered as `name`.

    data_dir defaults to data_config.data_dir; data_config and feature_config
    to their defaults (ctr.config.DataConfig / FeatureConfig); history_config
    (ctr.config.HistoryConfig) adds the behaviour-history field when enabled.
    """
    factory = _adapter_class(name)
    if factory is None:
        raise CTRError(
            f"unknown data set {name!r}; known data sets: {', '.join(available_adapters())}"
        )
    from ctr.config import DataConfig, FeatureConfig

    data_config = data_config if data_config is not None else DataConfig(dataset=name)
    feature_config = feature_config if feature_config is not None else FeatureConfig()
    if data_dir is None:
        data_dir = data_config.data_dir
    if history_config is None:
        return factory(data_dir, data_config, feature_config)
    return factory(data_dir, data_config, feature_config, history_config=history_config)


register_adapter("movielens-100k")(MovieLensAdapter)
register_adapter("movielens-1m")(MovieLens1MAdapter)
register_adapter("movielens-20m")(MovieLens20MAdapter)
register_adapter("synthetic")(SyntheticAdapter)
register_adapter_family("synthetic-", SyntheticAdapter)

__all__ = [
    "DataNotFoundError",
    "DatasetSchema",
    "EvalSplit",
    "FeatureType",
    "FieldSchema",
    "LeaveOneOutAdapter",
    "LabelEncoder",
    "MinMaxScaler",
    "MovieLens1MAdapter",
    "MovieLens20MAdapter",
    "MovieLensAdapter",
    "MovieLensPreprocessor",
    "MultiHotEncoder",
    "NegativeSamplingTrainSet",
    "SyntheticAdapter",
    "TabularDataset",
    "available_adapters",
    "encoder_from_dict",
    "generate_interactions",
    "get_adapter",
    "register_adapter",
    "register_adapter_family",
    "resolve_data_dir",
]
