"""Search spaces of `ctr sweep`: YAML files in configs/search/, validated when loaded.

    space = load_search_space("deepfm", base_config)  # shared.yaml + deepfm.yaml
    params = space.suggest(trial)        # {"training.learning_rate": 0.0021, ...} (Optuna's)
    space.overrides(params)              # ["training.learning_rate=0.0021", ...]

Every model's space is the dimensions of `shared.yaml` (the same for every
model, so that sweeps compare like with like) plus those of `<model>.yaml`:

    # configs/search/xdeepfm.yaml
    model_name: xdeepfm
    exclude_shared: []          # shared dimensions that do not apply to this model
    dimensions:
      cin.layer_sizes: {type: categorical, choices: [[16, 16], [32, 32], [64, 64]]}

A dimension is named by the config key it sets and is one of

    {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    {type: int, low: 1, high: 3, step: 1, log: false}
    {type: categorical, choices: [null, 2, 4]}   # any YAML values, lists included

and may set further keys to the same value (`also: [fm.embed_dim]`). Like the
configs, every key is checked: a misspelt key in a file, a dimension that names
no config key or a section the model does not read, or a value the config
refuses is an error that names it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from ctr.config import ConfigError, ExperimentConfig, parse_override

if TYPE_CHECKING:
    import optuna

SEARCH_DIR = Path("configs") / "search"
SHARED_FILE = "shared.yaml"
# Keys no sweep tunes: the seed is the sweep's tuning seed; the data set, the evaluation
# candidates and the monitor define what is measured; the rest say where things go.
FIXED_KEYS = (
    "seed",
    "model_name",
    "data.dataset",
    "data.data_dir",
    "data.num_eval_negatives",
    "data.eval_seed",
    "training.monitor",
    "training.monitor_mode",
    "training.resume_from",
    "training.checkpoint_dir",
)


class SearchSpaceError(ConfigError):
    """A search-space file is missing, malformed or names something that does not exist."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Dimension(_Strict):
    also: list[str] = Field(default_factory=list)  # more config keys set to the same value


class FloatDimension(_Dimension):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> FloatDimension:
        if self.low > self.high or (self.log and self.low <= 0):
            raise ValueError(f"expected 0 < low <= high with log, low <= high without, got {self}")
        return self


class IntDimension(_Dimension):
    type: Literal["int"]
    low: int
    high: int
    step: PositiveInt = 1
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> IntDimension:
        if self.low > self.high or (self.log and (self.low < 1 or self.step != 1)):
            raise ValueError(f"expected low <= high (log: low >= 1 and step 1), got {self}")
        return self


class CategoricalDimension(_Dimension):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_choices(self) -> CategoricalDimension:
        encoded = [_encode(c) for c in self.choices]
        if len(set(map(repr, encoded))) != len(encoded):
            raise ValueError(f"expected distinct choices, got {self.choices}")
        return self


Dimension = Annotated[
    FloatDimension | IntDimension | CategoricalDimension, Field(discriminator="type")
]


class SharedSpaceFile(_Strict):
    dimensions: dict[str, Dimension] = Field(default_factory=dict)


class ModelSpaceFile(_Strict):
    model_name: str
    shared: bool = True  # include the dimensions of shared.yaml beside this file
    exclude_shared: list[str] = Field(default_factory=list)
    dimensions: dict[str, Dimension] = Field(default_factory=dict)


def _encode(choice: Any) -> Any:
    """A categorical choice as Optuna stores it: scalars as they are, lists as JSON."""
    if choice is None or isinstance(choice, bool | int | float | str):
        return choice
    return json.dumps(choice)


def _yaml_value(value: Any) -> str:
    """A value as the text of a config override (JSON is YAML)."""
    return json.dumps(value)


@dataclass(frozen=True)
class SearchSpace:
    """The validated dimensions of one model's sweep, keyed by config key (in file order)."""

    model: str
    dimensions: dict[str, FloatDimension | IntDimension | CategoricalDimension]
    sources: tuple[str, ...]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw every dimension for `trial`; returns the decoded config values."""
        values: dict[str, Any] = {}
        for key, dim in self.dimensions.items():
            if isinstance(dim, FloatDimension):
                values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, IntDimension):
                values[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
            else:
                encoded = [_encode(c) for c in dim.choices]
                values[key] = dim.choices[encoded.index(trial.suggest_categorical(key, encoded))]
        return values

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's stored params (lists as JSON) -> config values."""
        out = {}
        for key, value in params.items():
            dim = self.dimensions.get(key)
            if isinstance(dim, CategoricalDimension):
                value = dim.choices[[_encode(c) for c in dim.choices].index(value)]
            out[key] = value
        return out

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """Config overrides setting each dimension (and its `also` keys) to `values`."""
        out = []
        for key, value in values.items():
            for target in (key, *self.dimensions[key].also):
                out.append(f"{target}={_yaml_value(value)}")
        return out

    def config_keys(self) -> set[str]:
        """Every config key a trial sets."""
        return {k for key, dim in self.dimensions.items() for k in (key, *dim.also)}

    def contains(self, key: str, value: Any) -> bool:
        dim = self.dimensions[key]
        if isinstance(dim, CategoricalDimension):
            return _encode(value) in [_encode(c) for c in dim.choices]
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(dim, IntDimension):
            return (
                float(value).is_integer()
                and dim.low <= value <= dim.high
                and ((int(value) - dim.low) % dim.step == 0)
            )
        return dim.low <= value <= dim.high

    def encode(self, values: dict[str, Any]) -> dict[str, Any]:
        """Config values -> Optuna params (for enqueuing a trial)."""
        return {
            k: _encode(v) if isinstance(self.dimensions[k], CategoricalDimension) else v
            for k, v in values.items()
        }

    def baseline(self, config: ExperimentConfig) -> dict[str, Any]:
        """The config's own values of the dimensions, where they lie in the space."""
        flat = config.to_flat_dict()
        return {k: flat[k] for k in self.dimensions if self.contains(k, flat[k])}

    def parse_point(self, pairs: Sequence[str]) -> dict[str, Any]:
        """'KEY=VALUE' pairs (a trial to enqueue) -> config values, each checked."""
        values = {}
        for pair in pairs:
            path, value = parse_override(pair)
            key = ".".join(path)
            if key not in self.dimensions:
                raise SearchSpaceError(
                    f"cannot enqueue {pair!r}: {key!r} is no dimension of the {self.model} "
                    f"search space; dimensions: {', '.join(self.dimensions)}"
                )
            if not self.contains(key, value):
                raise SearchSpaceError(
                    f"cannot enqueue {pair!r}: {value!r} lies outside the dimension "
                    f"{self.dimensions[key].model_dump(exclude={'also'})}"
                )
            values[key] = value
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            k: d.model_dump(exclude_defaults=True) | {"type": d.type}
            for k, d in self.dimensions.items()
        }

    def fingerprint(self) -> str:
        """A short hash of the dimensions: a continued sweep must search the same space."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_search_space(
    model: str, base: ExperimentConfig, search_dir: str | Path | None = None
) -> SearchSpace:
    """The validated search space of `model`: shared.yaml + <model>.yaml in `search_dir`
    (default: configs/search). `base` is the config the trials start from; every value
    of every dimension is checked against it (experiments/search_space_check.py)."""
    from experiments.search_space_check import read_search_space

    return read_search_space(model, base, search_dir)
