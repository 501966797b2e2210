"""ctr sweep: search spaces, the tuning seed, and a tiny real sweep on the session's
MLflow server (lr, 1 epoch, fast overrides): nested runs and their tags, a pruned
trial, a continued sweep (2 trials in parallel processes), compare and promote."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctr.config import load_config
from experiments.cli import main
from experiments.search_space import SearchSpaceError, load_search_space
from tests.conftest import FAST_OVERRIDES, ROOT, MlflowServer, tracking_env

# the search space keys the test's space tunes may not be overridden as well
SWEEP_OVERRIDES = [o for o in FAST_OVERRIDES if not o.startswith("training.learning_rate")]
TEST_SPACE = """\
model_name: lr
shared: false
dimensions:
  training.learning_rate: {type: float, low: 1.0e-6, high: 3.0e-2, log: true}
  training.l2_embedding: {type: categorical, choices: [0.0, 1.0e-5]}
"""
MODELS = ("lr", "fm", "deepfm", "xdeepfm", "attention_deepfm")


def _base(model: str = "lr"):
    return load_config(ROOT / f"configs/{model}_movielens.yaml")


def _space_dir(tmp_path: Path, text: str, shared: str | None = None) -> Path:
    (tmp_path / "lr.yaml").write_text(text)
    if shared is not None:
        (tmp_path / "shared.yaml").write_text(shared)
    return tmp_path


# ------------------------------------------------------------- search spaces
def test_every_model_searches_the_shared_dimensions_that_apply_to_it():
    shared = load_search_space("deepfm", _base("deepfm")).dimensions
    for model in MODELS:
        dims = load_search_space(model, _base(model)).dimensions
        assert {"training.learning_rate", "training.loss", "data.num_negatives"} <= set(dims)
        assert {"training.l2_embedding", "training.recency_half_life"} <= set(dims)
        for key in set(shared) & set(dims):  # the same range for every model
            assert dims[key] == shared[key], (model, key)
    assert "dnn.dropout" not in load_search_space("fm", _base("fm")).dimensions
    assert "cin.layer_sizes" in load_search_space("xdeepfm", _base("xdeepfm")).dimensions
    attention = load_search_space("attention_deepfm", _base("attention_deepfm")).dimensions
    assert {"attention.num_heads", "attention.num_layers", "dnn.hidden_units"} <= set(attention)


def test_a_misspelt_key_is_an_error_naming_it(tmp_path):
    bad = TEST_SPACE.replace("log: true", "lgo: true")
    with pytest.raises(
        SearchSpaceError, match="unknown key 'lgo' in dimension 'training.learning_rate'"
    ):
        load_search_space("lr", _base(), _space_dir(tmp_path, bad))
    with pytest.raises(SearchSpaceError, match="unknown key 'dimensons' at the top level"):
        load_search_space(
            "lr", _base(), _space_dir(tmp_path, TEST_SPACE.replace("dimensions:", "dimensons:"))
        )


def test_a_dimension_must_name_a_config_key_the_model_reads(tmp_path):
    typo = TEST_SPACE.replace("training.l2_embedding", "training.l2_embeding")
    with pytest.raises(SearchSpaceError, match="'training.l2_embeding'.*names no config key"):
        load_search_space("lr", _base(), _space_dir(tmp_path, typo))
    dnn = TEST_SPACE + "  dnn.dropout: {type: float, low: 0.0, high: 0.5}\n"
    with pytest.raises(SearchSpaceError, match="does not apply to lr"):
        load_search_space("lr", _base(), _space_dir(tmp_path, dnn))
    seed = TEST_SPACE + "  seed: {type: int, low: 0, high: 9}\n"
    with pytest.raises(SearchSpaceError, match="does not tune seed"):
        load_search_space("lr", _base(), _space_dir(tmp_path, seed))
    refused = TEST_SPACE + "  training.loss: {type: categorical, choices: [bce, hinge]}\n"
    with pytest.raises(SearchSpaceError, match="'training.loss'.*'hinge'"):
        load_search_space("lr", _base(), _space_dir(tmp_path, refused))


def test_suggested_values_become_overrides_and_lists_survive_optuna():
    import optuna

    space = load_search_space("xdeepfm", _base("xdeepfm"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = space.suggest(trial)
    assert isinstance(values["cin.layer_sizes"], list)
    assert space.decode(trial.params) == values
    config = load_config(ROOT / "configs/xdeepfm_movielens.yaml", space.overrides(values))
    assert config.fm.embed_dim == config.features.embedding_dim == values["features.embedding_dim"]
    assert config.cin.layer_sizes == values["cin.layer_sizes"]


def test_a_reporting_seed_is_refused():
    result = CliRunner().invoke(main, ["sweep", "--model", "lr", "--trials", "1", "--seed", "2"])
    assert result.exit_code == 1
    assert "seed 2 is a reporting seed" in result.output


# --------------------------------------------------------------- a real sweep
@dataclass
class Sweep:
    uri: str
    name: str
    storage: str
    args: list[str]
    outputs: list[str]


def _ctr(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout  # without the notes on stderr (e.g. the UI link after --format json)


@pytest.fixture(scope="module")
def sweep(mlflow_server: MlflowServer, tmp_path_factory) -> Sweep:
    """3 trials: the config itself (complete), then the enqueued learning rate 1e-6,
    which cannot learn in one epoch and is pruned (the pruner compares from the first
    complete trial on, at any epoch), then a sampled one; then 2 more in 2 processes."""
    root = tmp_path_factory.mktemp("sweep")
    space = _space_dir(root, TEST_SPACE)
    storage = f"sqlite:///{root / 'optuna.db'}"
    overrides = [*SWEEP_OVERRIDES, f"training.checkpoint_dir={root / 'checkpoints'}"]
    args = [
        *["sweep", "--model", "lr", "--name", "test-lr", "--search-dir", str(space)],
        *["--storage", storage, "--pruner-startup-trials", "1", "--pruner-warmup-epochs", "0"],
        *["--override", *overrides],
    ]
    with tracking_env(mlflow_server.uri):
        first = _ctr(
            *args[:1], "--trials", "3", "--enqueue", "training.learning_rate=1.0e-6", *args[1:]
        )
        second = _ctr(*args[:1], "--trials", "2", "--jobs", "2", *args[1:])
    return Sweep(mlflow_server.uri, "test-lr", storage, args, [first, second])


def _runs(sweep: Sweep):
    from mlflow import MlflowClient

    from experiments.sweep_runs import find_sweep, sweep_trials

    client = MlflowClient(sweep.uri)
    parent = find_sweep(client, sweep.name)
    return (
        client,
        parent,
        {int(r.data.tags["sweep_trial"]): r for r in sweep_trials(client, parent)},
    )


@pytest.mark.slow
def test_trials_are_nested_runs_tagged_with_sweep_trial_and_state(sweep):
    client, parent, trials = _runs(sweep)
    assert sorted(trials) == [0, 1, 2, 3, 4]  # the continued sweep added 2 under one parent
    for number, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["sweep"] == sweep.name
        assert run.data.tags["sweep_trial"] == str(number)
        assert run.data.tags["sweep_state"] in ("complete", "pruned")
        assert run.info.status == "FINISHED"
        assert not [k for k in run.data.metrics if k.startswith("test_")], "trials never see test"
        assert run.data.params["seed"] == "0"
    assert trials[0].data.params["training.learning_rate"] == "0.001"  # the config itself
    assert trials[0].data.tags["sweep_state"] == "complete"
    assert trials[1].data.params["training.learning_rate"] == "1e-06"
    assert trials[1].data.tags["sweep_state"] == "pruned"  # not FAILED
    assert "best_val_ndcg_at_10" not in trials[1].data.metrics


@pytest.mark.slow
def test_the_parent_holds_the_best_trial_and_the_plots(sweep):
    import optuna

    client, parent, trials = _runs(sweep)
    tags = parent.data.tags
    assert parent.info.status == "FINISHED" and tags["sweep_role"] == "parent"
    assert "model" not in tags and "model" not in parent.data.params  # not a training run
    complete = {n: r for n, r in trials.items() if r.data.tags["sweep_state"] == "complete"}
    best = max(complete.values(), key=lambda r: r.data.metrics["best_val_ndcg_at_10"])
    assert tags["best_run_id"] == best.info.run_id
    assert tags["best_trial"] == best.data.tags["sweep_trial"]
    assert parent.data.metrics["best_val_ndcg_at_10"] == pytest.approx(
        best.data.metrics["best_val_ndcg_at_10"]
    )
    lr = json.loads(tags["best.training.learning_rate"])
    assert float(best.data.params["training.learning_rate"]) == pytest.approx(lr)
    files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"optimization_history.png", "trials.csv", "best_trial.json"} <= files
    assert ("param_importances.png" in files) == (len(complete) >= 2)
    study = optuna.load_study(study_name=sweep.name, storage=sweep.storage)
    assert len(study.trials) == 5 and study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert "trials 3 -> 5, 2 at a time" in sweep.outputs[1]


@pytest.mark.slow
def test_a_continued_sweep_must_keep_its_definition(sweep):
    args = [*sweep.args, "--trials", "1", "training.optimizer=adamw"]
    with tracking_env(sweep.uri):
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "began with another base_config_sha" in result.output


@pytest.mark.slow
def test_compare_lists_the_trials_best_first(sweep):
    with tracking_env(sweep.uri):
        out = _ctr("compare", "--sweep", sweep.name)
        rows = json.loads(_ctr("compare", "--sweep", sweep.name, "--format", "json"))
    assert f"sweep {sweep.name!r}" in out and "training.learning_rate" in out
    assert [r["trial"] for r in rows if r["state"] == "pruned"]
    states = [r["state"] for r in rows]
    assert states == sorted(states, key=["complete", "pruned"].index)
    values = [r["val_ndcg_at_10"] for r in rows if r["state"] == "complete"]
    assert values == sorted(values, reverse=True)


@pytest.mark.slow
def test_promote_registers_the_best_complete_trial(sweep):
    client, parent, _ = _runs(sweep)
    args = ["promote", "--sweep", sweep.name, "--model-name", "sweep-test-lr"]
    with tracking_env(sweep.uri):
        out = _ctr(*args)
        again = _ctr(*args)
    version = client.get_model_version_by_alias("sweep-test-lr", "champion")
    assert version.run_id == parent.data.tags["best_run_id"]
    assert "is now @champion" in out and "nothing to do" in again
    assert shlex.split(out.splitlines()[-1]) == ["models:/sweep-test-lr@champion"]
