"""Reading and checking the search-space files (experiments/search_space.py says
what they hold): pydantic for the keys of each file, then every dimension against
ExperimentConfig and the base config of the sweep's model.

    space = read_search_space("deepfm", base_config)  # what load_search_space calls
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ctr.config import ConfigError, ExperimentConfig, _fix_yaml_floats, build_config
from experiments.search_space import (
    FIXED_KEYS,
    SEARCH_DIR,
    SHARED_FILE,
    CategoricalDimension,
    FloatDimension,
    IntDimension,
    ModelSpaceFile,
    SearchSpace,
    SearchSpaceError,
    SharedSpaceFile,
    _Dimension,
    _yaml_value,
)


def default_search_dir() -> Path:
    """configs/search in the working directory, else in the checkout."""
    if SEARCH_DIR.is_dir():
        return SEARCH_DIR
    in_checkout = Path(__file__).resolve().parents[1] / SEARCH_DIR
    return in_checkout if in_checkout.is_dir() else SEARCH_DIR


def _read(path: Path, cls: type[BaseModel]) -> Any:
    if not path.is_file():
        raise SearchSpaceError(
            f"search space file not found: {path} (the shipped ones are in {SEARCH_DIR}/)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"search space file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"search space file {path} must hold a mapping, got {raw!r}")
    try:
        return cls.model_validate(_fix_yaml_floats(raw))
    except ValidationError as exc:
        raise SearchSpaceError(_format_errors(exc, path, cls)) from None


_DIMENSION_CLASSES = {
    "float": FloatDimension,
    "int": IntDimension,
    "categorical": CategoricalDimension,
}


def _format_errors(exc: ValidationError, path: Path, cls: type[BaseModel]) -> str:
    lines = [f"invalid search space {path}:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden":
            if len(loc) == 1:
                where, valid = "at the top level", list(cls.model_fields)
            else:  # dimensions.<config key>.<type>.<key>
                where = f"in dimension {loc[1]!r}"
                valid = list(_DIMENSION_CLASSES.get(loc[2], _Dimension).model_fields)
            lines.append(f"  unknown key {loc[-1]!r} {where}; valid keys: {', '.join(valid)}")
        elif err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            got = err["input"].get("type") if isinstance(err["input"], dict) else err["input"]
            lines.append(
                f"  dimension {loc[1]!r}: expected type: float, int or categorical, got {got!r}"
            )
        else:
            lines.append(f"  {'.'.join(loc) or '<root>'}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _config_field(key: str, source: str):
    """The pydantic field a dotted config key names; SearchSpaceError naming the valid keys."""
    model: type[BaseModel] = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            where = ".".join(parts[:i])
            raise SearchSpaceError(
                f"dimension {key!r} in {source} names no config key ({part!r} is unknown); "
                f"valid keys{' under ' + where if where else ''}: {', '.join(model.model_fields)}"
            )
        annotation = model.model_fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not is_section:
                raise SearchSpaceError(
                    f"dimension {key!r} in {source}: {'.'.join(parts[: i + 1])!r} is a value, "
                    f"not a section"
                )
            model = annotation
        elif is_section:
            raise SearchSpaceError(
                f"dimension {key!r} in {source} names a config section; name one of its keys: "
                f"{', '.join(annotation.model_fields)}"
            )


def _check_dimension(key: str, dim, source: str, base: ExperimentConfig, from_shared: bool):
    from experiments.tracking import unused_config_sections

    unused = unused_config_sections(base.model_name)
    raw = base.model_dump(mode="json")
    for target in (key, *dim.also):
        _config_field(target, source)
        if target in FIXED_KEYS:
            raise SearchSpaceError(
                f"dimension {target!r} in {source}: a sweep does not tune {target} (the seed is "
                f"the sweep's tuning seed; data set, candidates and monitor define the measure)"
            )
        section = target.split(".", 1)[0]
        if section in unused:
            hint = f"list {key!r} under exclude_shared" if from_shared else "remove it"
            raise SearchSpaceError(
                f"dimension {target!r} in {source} does not apply to {base.model_name}: the "
                f"model reads no {section!r} section; {hint}"
            )
    if isinstance(dim, CategoricalDimension):
        values = dim.choices
    else:
        values = [dim.low, dim.high]
    for value in values:
        try:  # every value must make a config the model accepts
            build_config(raw, [f"{t}={_yaml_value(value)}" for t in (key, *dim.also)], source)
        except ConfigError as exc:
            raise SearchSpaceError(
                f"dimension {key!r} in {source}: value {value!r}: {exc}"
            ) from None


def read_search_space(
    model: str, base: ExperimentConfig, search_dir: str | Path | None = None
) -> SearchSpace:
    """The validated search space of `model` (shared.yaml + <model>.yaml in `search_dir`).

    `base` is the config the trials start from (its model must be `model`); every value
    of every dimension is checked against it.
    """
    directory = Path(search_dir) if search_dir else default_search_dir()
    path = directory / f"{model}.yaml"
    spec: ModelSpaceFile = _read(path, ModelSpaceFile)
    if spec.model_name != model:
        raise SearchSpaceError(f"{path} is the search space of {spec.model_name!r}, not {model!r}")
    dims: dict[str, Any] = {}
    sources = []
    if spec.shared:
        shared_path = directory / SHARED_FILE
        shared: SharedSpaceFile = _read(shared_path, SharedSpaceFile)
        unknown = sorted(set(spec.exclude_shared) - set(shared.dimensions))
        if unknown:
            raise SearchSpaceError(
                f"exclude_shared in {path} names {unknown}, not dimensions of {shared_path}; "
                f"shared dimensions: {', '.join(shared.dimensions)}"
            )
        for key, dim in shared.dimensions.items():
            if key not in spec.exclude_shared:
                _check_dimension(key, dim, str(shared_path), base, from_shared=True)
                dims[key] = dim
        sources.append(str(shared_path))
    elif spec.exclude_shared:
        raise SearchSpaceError(f"{path}: exclude_shared needs shared: true")
    for key, dim in spec.dimensions.items():
        if key in dims:
            raise SearchSpaceError(
                f"dimension {key!r} in {path} is a shared dimension already: every model "
                f"searches the shared ones alike; remove it here (or list it under "
                f"exclude_shared where this model must search it differently)"
            )
        _check_dimension(key, dim, str(path), base, from_shared=False)
        dims[key] = dim
    sources.append(str(path))
    seen: dict[str, str] = {}
    for key, dim in dims.items():
        for target in (key, *dim.also):
            if target in seen:
                raise SearchSpaceError(
                    f"{target!r} is set by two dimensions: {seen[target]}, {key}"
                )
            seen[target] = key
    if not dims:
        raise SearchSpaceError(f"the {model} search space in {path} has no dimensions")
    return SearchSpace(model=model, dimensions=dims, sources=tuple(sources))
