"""Experiment configuration: defaults, YAML + overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctr.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    dump_config,
    load_config,
    parse_override,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults():
    cfg = ExperimentConfig()
    assert cfg.model_name == "deepfm"
    assert cfg.seed == 42
    assert cfg.data.dataset == "movielens-100k"
    assert (cfg.data.num_negatives, cfg.data.num_eval_negatives) == (4, 999)
    assert cfg.features.embedding_dim == 16 and cfg.features.max_genres == 6
    assert cfg.dnn.hidden_units == [256, 128, 64]
    assert cfg.training.batch_size == 1024
    assert cfg.training.learning_rate == 1.0e-3
    assert cfg.training.monitor == "val_ndcg_at_10"
    assert load_config() == cfg  # no file, no overrides: the defaults


def test_load_yaml_with_overrides(tmp_path):
    path = _write(
        tmp_path,
        "model_name: xdeepfm\ntraining:\n  num_epochs: 10\n  learning_rate: 1.0e-2\n",
    )
    cfg = load_config(
        path,
        ["training.num_epochs=2", "dnn.hidden_units=[128,64]", "training.learning_rate=1e-3"],
    )
    assert cfg.model_name == "xdeepfm"
    assert cfg.training.num_epochs == 2
    assert cfg.dnn.hidden_units == [128, 64]
    assert isinstance(cfg.training.learning_rate, float)
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    assert cfg.training.batch_size == 1024  # untouched keys keep their defaults


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads 1e-3 as a string; the loader accepts it as a number
    cfg = load_config(_write(tmp_path, "training:\n  learning_rate: 1e-3\n"))
    assert cfg.training.learning_rate == pytest.approx(1e-3)


def test_misspelt_yaml_key_names_it_and_lists_valid_keys(tmp_path):
    path = _write(tmp_path, "training:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'training.learnig_rate'" in message
    assert "learning_rate" in message and "batch_size" in message
    with pytest.raises(ConfigError, match="'modle_name'.*valid keys: model_name, seed"):
        load_config(_write(tmp_path, "modle_name: fm\n"))


def test_misspelt_override_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["training.num_epoch=2"])
    message = str(info.value)
    assert "'training.num_epoch'" in message
    assert "num_epochs" in message and "under training" in message
    with pytest.raises(ConfigError, match="'trainig'.*valid keys: model_name"):
        load_config(None, ["trainig.num_epochs=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.num_epochs")


def test_bad_value_gives_the_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.num_epochs: .*got 0"):
        load_config(None, ["training.num_epochs=0"])
    with pytest.raises(ConfigError, match=r"dnn\.dropout"):
        load_config(_write(tmp_path, "dnn:\n  dropout: 1.5\n"))
    with pytest.raises(ConfigError, match=r"training\.optimizer"):
        load_config(None, ["training.optimizer=adagrad"])
    with pytest.raises(ConfigError, match="validation metric"):
        load_config(None, ["training.monitor=test_auc"])
    assert issubclass(ConfigError, ValueError)


def test_missing_and_malformed_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load_config(missing)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "training: [unclosed\n"))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "null\n", "~\n"])
def test_empty_config_file_is_an_error_naming_it(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="is empty") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "ctr train --model NAME` without --config" in str(info.value)
    # an explicit empty mapping still means "all defaults", as load_config(None) does
    assert load_config(_write(tmp_path, "{}\n")) == load_config(None) == ExperimentConfig()


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "model_name=attention_deepfm",
            "training.weight_decay=1e-5",
            "features.field_embedding_dims={user_id: 32}",
            "training.grad_clip_norm=5.0",
        ],
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    reloaded = load_config(path)
    assert reloaded == cfg
    assert reloaded.features.field_embedding_dims == {"user_id": 32}
    assert build_config(cfg.model_dump(mode="json")) == cfg


def test_flat_dict_uses_dotted_keys():
    flat = ExperimentConfig().to_flat_dict()
    assert flat["training.learning_rate"] == 1.0e-3
    assert flat["dnn.hidden_units"] == [256, 128, 64]
    assert flat["features.field_embedding_dims"] == {}
    assert flat["model_name"] == "deepfm"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.dataset == "movielens-100k"
    assert path.stem.startswith(cfg.model_name)


def test_misspelt_model_name_fails_when_the_config_is_validated(tmp_path):
    path = _write(tmp_path, "model_name: deepfn\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "model_name" in message and "'deepfn'" in message
    for known in ("attention_deepfm", "deepfm", "fm", "lr", "xdeepfm"):
        assert repr(known) in message
    with pytest.raises(ConfigError, match="expected a model name in"):
        load_config(None, ["model_name=xdeepFM"])


def test_a_model_registered_later_is_a_valid_model_name():
    from ctr.models import MODEL_REGISTRY, DeepFM

    MODEL_REGISTRY["deepfm_copy_for_config_test"] = DeepFM
    try:
        assert load_config(None, ["model_name=deepfm_copy_for_config_test"]).model_name
    finally:
        del MODEL_REGISTRY["deepfm_copy_for_config_test"]


@pytest.mark.parametrize(
    ("override", "where", "why"),
    [
        ("dnn.hidden_units=[128,0]", "dnn.hidden_units.1", "greater than 0"),
        ("dnn.hidden_units=[]", "dnn.hidden_units", "at least 1 item"),
        ("cin.layer_sizes=[64,0]", "cin.layer_sizes.1", "greater than 0"),
        ("cin.layer_sizes=[]", "cin.layer_sizes", "at least 1 item"),
        ("cin.layer_sizes=[128,65,64]", "cin", "must be even"),
        ("attention.attention_dim=0", "attention.attention_dim", "greater than or equal to 1"),
        ("features.field_embedding_dims={user_id: 0}", "field_embedding_dims.user_id", "than 0"),
    ],
)
def test_sizes_a_layer_would_refuse_are_config_errors(override, where, why):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert where in str(err.value) and why in str(err.value)


def test_a_dropout_the_fast_mask_rounds_to_one_is_a_config_error():
    plain = load_config(None, ["dnn.dropout=0.999995", "dnn.fast_dropout=false"])
    assert plain.dnn.dropout == 0.999995  # nn.Dropout takes it
    with pytest.raises(ConfigError, match="dnn: .*rounds to 1"):
        load_config(None, ["dnn.dropout=0.999995", "dnn.fast_dropout=true"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["cin.layer_sizes=[128,65]"],  # the last layer is not halved
        ["cin.layer_sizes=[65,33]", "cin.split_half=false"],
        ["dnn.dropout=0.99"],
    ],
)
def test_sizes_the_layers_accept_are_valid(overrides):
    from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
    from ctr.models import create_model

    config = load_config(None, ["model_name=xdeepfm", *overrides])
    schema = DatasetSchema(
        [FieldSchema("a", FeatureType.SPARSE, 5, 8), FieldSchema("b", FeatureType.SPARSE, 7, 8)]
    )
    assert create_model("xdeepfm", schema, config).cin.layer_sizes == list(config.cin.layer_sizes)
