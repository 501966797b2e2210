"""Experiment configuration: pydantic v2 models validated at the boundary.

Every section is frozen and forbids unknown keys, so a typo in a YAML file or
an override is an error naming the key and the valid keys at that level.

    cfg = load_config("configs/deepfm_movielens.yaml", ["training.num_epochs=2"])
    cfg.training.batch_size  # 1024
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ctr.errors import CTRError


class ConfigError(CTRError):
    """A configuration file or override is missing, malformed or invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    dataset: str = "movielens-100k"  # adapter name, see ctr.data.get_adapter
    data_dir: str = "data/ml-100k"  # directory holding u.data, u.item, u.user, ...
    num_negatives: int = Field(4, ge=1)  # training negatives per positive, fresh each epoch
    num_eval_negatives: int = Field(999, ge=1)  # sampled negatives per user for val/test
    eval_seed: int = 2024  # fixed seed of the evaluation candidates (shared by all runs)


class FeatureConfig(_Section):
    embedding_dim: int = Field(16, ge=1)  # default embedding size of every field
    # per-field override of embedding_dim, e.g. {"user_id": 32}
    field_embedding_dims: dict[str, PositiveInt] = Field(default_factory=dict)
    max_genres: int = Field(6, ge=1)  # padded length of the multi-hot genre list


class FMConfig(_Section):
    # size of the shared space in which fields interact (FM, CIN, attention);
    # fields whose embedding_dim differs are projected into it
    embed_dim: int = Field(16, ge=1)


class DNNConfig(_Section):
    hidden_units: list[PositiveInt] = Field(default_factory=lambda: [256, 128, 64], min_length=1)
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "prelu"] = "relu"
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    use_batch_norm: bool = False
    # draw dropout masks with the DNN's cheaper CPU mask (ctr.models.layers.dnn.Dropout)
    # instead of nn.Dropout's float Bernoulli draws, about 40% of a DeepFM step on CPU.
    # Same semantics, another random stream: false gives nn.Dropout's seeded numbers
    fast_dropout: bool = True

    @model_validator(mode="after")
    def _check_fast_dropout(self) -> DNNConfig:
        # the fast mask draws in steps of 2^-16 and refuses a p that rounds to 1
        if self.fast_dropout and round(self.dropout * 65536) >= 65536:
            raise ValueError(
                f"expected dropout < 1 - 2**-17 with fast_dropout (it rounds to 1), "
                f"got {self.dropout}"
            )
        return self


class CINConfig(_Section):
    layer_sizes: list[PositiveInt] = Field(default_factory=lambda: [128, 128], min_length=1)
    split_half: bool = True  # xDeepFM paper: half of each layer feeds the next, half the output

    @model_validator(mode="after")
    def _check_even_sizes(self) -> CINConfig:
        if self.split_half and any(h % 2 for h in self.layer_sizes[:-1]):
            raise ValueError(
                f"with split_half every CIN layer but the last is halved, so its size must be "
                f"even; got layer_sizes={self.layer_sizes} (use even sizes or split_half=false)"
            )
        return self


class AttentionConfig(_Section):
    num_heads: int = Field(2, ge=1)
    attention_dim: int = Field(16, ge=1)  # per-head size of Q/K/V
    num_layers: int = Field(2, ge=1)
    use_residual: bool = True


class HistoryConfig(_Section):
    """Behaviour history: the `history` field, each row's most recent items before it.

    The rules of what a row may see are in DESIGN.md ("Behaviour history"); the field
    holds encoded movie ids (the movie_id field's indices and embedding rows), left-padded
    with 0, the most recent item last.
    """

    enabled: bool = False  # add the `history` field to every row
    length: int = Field(50, ge=1)  # N: the most recent items kept per row
    # how a CTR model (deepfm, xdeepfm, attention_deepfm, fm) turns the N items into
    # one field embedding: mean of the items; din: the candidate item attends over
    # them (Zhou et al., KDD 2018); self_attention: a SASRec-style encoder over the
    # items first, then the candidate attends over its outputs
    pooling: Literal["mean", "din", "self_attention"] = "mean"
    attention_hidden_units: list[PositiveInt] = Field(
        default_factory=lambda: [64, 32], min_length=1
    )  # the DIN scorer MLP over [h, c, h - c, h * c]
    # the self-attention encoder (pooling self_attention, and the sasrec model); in the CTR
    # models it runs at movie_id's embedding size, so num_heads must divide that size
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    hidden_dim: int = Field(64, ge=1)  # sasrec only: its item embedding and encoder width
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class TrainingConfig(_Section):
    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(65536, ge=1)  # rows scored per forward pass in evaluation
    num_epochs: int = Field(50, ge=1)
    learning_rate: float = Field(1.0e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)  # optimizer weight decay on all parameters
    momentum: float = Field(0.9, ge=0.0)  # sgd only
    # adam / adamw update all parameters in one fused kernel (CPU and CUDA) instead of
    # torch's for-each implementation: the same algorithm, other rounding, so seeded
    # numbers differ in the last digits and then beyond
    fused_optimizer: bool = True
    scheduler: Literal["none", "step", "cosine", "plateau"] = "none"
    step_size: int = Field(10, ge=1)  # step scheduler: epochs between decays
    gamma: float = Field(0.5, gt=0.0, le=1.0)  # step / plateau decay factor
    # bce: pointwise on every row; bpr: each positive against each of its own K sampled
    # negatives (pairwise); softmax: each positive against its K negatives at once
    # (sampled softmax, listwise). bpr and softmax scores rank but are not probabilities.
    loss: Literal["bce", "bpr", "softmax"] = "bce"
    l2_embedding: float = Field(0.0, ge=0.0)  # L2 penalty on embedding tables
    grad_clip_norm: float | None = Field(None, gt=0.0)
    # exponential moving average of the weights, updated after every step
    # (w_ema = d * w_ema + (1 - d) * w, d warmed up as min(decay, (1+n)/(10+n)) over the
    # first updates n); validation, test, the best checkpoint and the returned model
    # use the averaged weights. None trains without it.
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    # recency weighting of the loss: a training positive (with its K negatives) that
    # r later training interactions of its user follow weighs
    # max(recency_floor, 0.5 ** (r / recency_half_life)), weights scaled to mean 1.
    # Uses the time order of the training interactions only. None weighs all equally.
    recency_half_life: float | None = Field(None, gt=0.0)
    recency_floor: float = Field(0.1, gt=0.0, le=1.0)
    monitor: str = "val_ndcg_at_10"  # metric for early stopping and the best checkpoint
    monitor_mode: Literal["max", "min"] = "max"
    # epochs without improvement before stopping; 0 disables early stopping. Validation
    # NDCG@10 over 943 users is noisy, so a short patience stops too early.
    early_stopping_patience: int = Field(10, ge=0)
    # also rank val against the whole catalogue: once, for the best epoch's weights at
    # the end (best_val_full_*), or every epoch with full_ranking_every_epoch (needed,
    # and implied, when the monitor is a val_full_* metric)
    full_ranking: bool = True
    full_ranking_every_epoch: bool = False
    # rank the test split against the whole catalogue at the end (off only to save
    # time where test_full_* are not needed, e.g. quick test runs)
    test_full_ranking: bool = True
    checkpoint_dir: str = "checkpoints"
    resume_from: str | None = None  # path of a checkpoint to continue from
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    num_threads: int | None = Field(None, ge=1)  # torch intra-op threads; None = torch default


class ExperimentConfig(_Section):
    model_name: str = "deepfm"
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    fm: FMConfig = Field(default_factory=FMConfig)
    dnn: DNNConfig = Field(default_factory=DNNConfig)
    cin: CINConfig = Field(default_factory=CINConfig)
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @field_validator("model_name")
    @classmethod
    def _check_model_name(cls, name: str) -> str:
        # Imported here, not at the top: ctr.models imports this module (the models read
        # ExperimentConfig), so a top-level import would be a cycle.
        from ctr.models import MODEL_REGISTRY, list_models

        if name not in MODEL_REGISTRY:
            raise ValueError(f"expected a model name in {list_models()}, got {name!r}")
        return name

    @model_validator(mode="after")
    def _check_monitor(self) -> ExperimentConfig:
        if not self.training.monitor.startswith("val_"):
            raise ValueError(
                f"training.monitor must be a validation metric (val_*), got "
                f"{self.training.monitor!r}: choosing on test numbers is not allowed"
            )
        return self

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {"training.learning_rate": 0.001, ...}."""
        return flatten_dict(self.model_dump(mode="json"))


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "field_embedding_dims":
            out.update(flatten_dict(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _check_keys(raw: dict[str, Any], model: type[BaseModel], where: str) -> None:
    """Raise ConfigError for keys the model does not know, listing the valid ones."""
    valid = list(model.model_fields)
    for key, value in raw.items():
        if key not in model.model_fields:
            raise ConfigError(
                f"unknown config key {where + key!r}; valid keys"
                f"{' under ' + where.rstrip('.') if where else ''}: {', '.join(valid)}"
            )
        annotation = model.model_fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if isinstance(value, dict):
                _check_keys(value, annotation, f"{where}{key}.")


def parse_override(override: str) -> tuple[list[str], Any]:
    """'training.num_epochs=2' -> (['training', 'num_epochs'], 2). Values are YAML."""
    if "=" not in override:
        raise ConfigError(
            f"override {override!r} is not of the form section.key=value "
            f"(e.g. training.num_epochs=2)"
        )
    key, _, text = override.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    if isinstance(value, str):
        value = _maybe_number(value)
    return key.split("."), value


def _maybe_number(text: str) -> Any:
    # PyYAML reads '1e-3' as a string; accept it as a float in overrides.
    try:
        return float(text) if any(c in text for c in "eE.") else int(text)
    except ValueError:
        return text


def _fix_yaml_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str):
        try:
            return float(node) if ("e" in node.lower() and node[0] in "0123456789.+-") else node
        except ValueError:
            return node
    return node


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def build_config(raw: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"):
    """Validate a raw nested dict plus overrides into an ExperimentConfig."""
    raw = _fix_yaml_floats(dict(raw))
    _check_keys(raw, ExperimentConfig, "")
    for override in overrides or []:
        path, value = parse_override(override)
        node: dict[str, Any] = raw
        model: type[BaseModel] = ExperimentConfig
        for i, part in enumerate(path):
            if part not in model.model_fields:
                where = ".".join(path[:i])
                raise ConfigError(
                    f"unknown config key {'.'.join(path[: i + 1])!r} in override {override!r}; "
                    f"valid keys{' under ' + where if where else ''}: "
                    f"{', '.join(model.model_fields)}"
                )
            if i == len(path) - 1:
                node[part] = value
                break
            annotation = model.model_fields[part].annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ConfigError(
                    f"override {override!r}: {'.'.join(path[: i + 1])!r} is a value, not a section"
                )
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(path[: i + 1])!r} in {source} must be a mapping")
            model = annotation
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc


def load_config(
    yaml_path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read a YAML config (or start from defaults when None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {path} (the configs shipped with ctr are in configs/)"
            )
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:  # an empty file, only comments, or `null`
            raise ConfigError(
                f"config file {path} is empty (or holds only comments or null): expected a "
                f"mapping of config sections, e.g. `model_name: deepfm`; to train a model "
                f"with its default config, run `ctr train --model NAME` without --config"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, got {type(loaded).__name__}"
            )
        raw = loaded
        source = str(path)
    return build_config(raw, overrides, source)


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (load_config reads it back identically)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
