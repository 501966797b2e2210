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
