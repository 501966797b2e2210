"""Tracked training against a real MLflow server: run contents, failures, loading."""

from __future__ import annotations

import json
import math
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml

from tests.conftest import (
    FAST_OVERRIDES,
    ROOT,
    VENV_BIN,
    TrainedExperiment,
    free_port,
    stop_process,
    subprocess_env,
    tracking_env,
)
from tests.readme_blocks import readme_blocks, readme_commands
from tests.servers import readme_server

EPOCH_METRICS = [
    "train_loss",
    "lr",
    "epoch_seconds",
    "val_auc",
    "val_logloss",
    *[f"val_{m}_at_{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)],
]
RUN_ARTIFACTS = [
    "config/config.yaml",
    "data/schema.json",
    "data/encoders.json",
    "data/eval_candidates.npz",
    "plots/training_curves.png",
    "checkpoints/best.pt",
]


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


# ----------------------------------------------------------------- pure helpers
def test_metric_keys_never_contain_at():
    from experiments.tracking import metric_key

    assert metric_key("val_hr@10") == "val_hr_at_10"
    assert metric_key("val_ndcg_at_10") == "val_ndcg_at_10"


def test_pip_requirements_pin_the_installed_versions():
    from importlib import metadata

    from experiments.artifacts import pip_requirements

    reqs = dict(r.split("==") for r in pip_requirements())
    assert reqs["torch"] == metadata.version("torch").split("+")[0]
    assert set(reqs) == {"torch", "numpy", "pandas", "pydantic", "pyyaml", "scikit-learn"}


# ------------------------------------------------------------------- run contents
@pytest.mark.slow
def test_mlflow_run_records_params_metrics_artifacts_and_model(
    trained_experiment: TrainedExperiment,
):
    import mlflow.pytorch
    from mlflow import MlflowClient

    from ctr.data.schema import DatasetSchema
    from ctr.models.base import BaseCTRModel

    client = MlflowClient(trained_experiment.uri)
    run = client.get_run(trained_experiment.runs["deepfm"])
    assert run.info.status == "FINISHED"
    # `mlflow run` created the run; `ctr train` attached to it
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    params = run.data.params
    assert params["model"] == "deepfm" and params["model_name"] == "deepfm"
    assert params["dataset"] == "movielens-100k"
    assert params["seed"] == "42"
    assert params["training.num_epochs"] == "1"
    assert params["training.learning_rate"] == "0.001"
    assert params["dnn.hidden_units"] == "[16]"
    # only DeepFM's sections, and none of the MLproject's optional params (not given)
    assert not [k for k in params if k.startswith(("cin.", "attention."))]
    assert not {"config", "epochs", "batch_size", "learning_rate"} & set(params)
    assert int(params["torch_num_threads"]) >= 1 and run.data.tags["cpu"]
    assert int(params["num_params"]) > 1000
    assert run.data.tags["model"] == "deepfm"
    assert run.data.tags["dataset"] == "movielens-100k"
    assert run.data.tags["best_epoch"] == "1"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    metrics = run.data.metrics
    assert metrics["best_val_ndcg_at_10"] == metrics["val_ndcg_at_10"]
    for key in ("test_auc", "test_logloss", "test_hr_at_10", "test_ndcg_at_10", "test_hr_at_20"):
        assert 0.0 <= metrics[key] <= (math.inf if "logloss" in key else 1.0), key
    assert all("@" not in key for key in metrics)
    assert metrics["tracking_overhead_fraction"] > 0.0

    # artifacts
    paths = _artifact_paths(client, run.info.run_id)
    assert set(RUN_ARTIFACTS) <= paths, paths
    config_text = client.download_artifacts(run.info.run_id, "config/config.yaml")
    config = yaml.safe_load(open(config_text).read())
    assert config["model_name"] == "deepfm" and config["training"]["num_epochs"] == 1
    schema_path = client.download_artifacts(run.info.run_id, "data/schema.json")
    schema = DatasetSchema.from_json(open(schema_path).read())
    encoders = json.load(open(client.download_artifacts(run.info.run_id, "data/encoders.json")))
    assert set(encoders["encoders"]) == set(schema.field_names)
    cands = np.load(client.download_artifacts(run.info.run_id, "data/eval_candidates.npz"))
    assert cands["test_candidate_items"].shape == (943, 100)
    assert cands["val_user_ids"].shape == (943,)
    png = open(client.download_artifacts(run.info.run_id, "plots/training_curves.png"), "rb")
    assert png.read(8) == b"\x89PNG\r\n\x1a\n"

    # the model: the real ctr class with its schema, callable on encoded tensors
    (logged,) = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
    )
    assert logged.name == "model"
    with tracking_env(trained_experiment.uri):
        model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    assert isinstance(model, BaseCTRModel) and type(model).__name__ == "DeepFM"
    assert model.schema == schema
    assert not model.training


@pytest.mark.slow
def test_one_point_per_epoch_from_one_batched_call(trained_experiment: TrainedExperiment):
    from mlflow import MlflowClient

    client = MlflowClient(trained_experiment.uri)
    run = client.get_run(trained_experiment.runs["lr"])
    assert run.data.params["training.num_epochs"] == "2"
    stamps = {}
    for key in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
        stamps[key] = {m.step: m.timestamp for m in history}
    # one log_batch per epoch: every metric of an epoch carries the same timestamp
    assert all(s == stamps["val_auc"] for s in stamps.values())
    best = int(run.data.tags["best_epoch"])
    history = client.get_metric_history(run.info.run_id, "val_ndcg_at_10")
    (best_value,) = [m.value for m in history if m.step == best]
    assert run.data.metrics["best_val_ndcg_at_10"] == pytest.approx(best_value)
    assert best_value == max(m.value for m in history)


@pytest.mark.slow
def test_ctr_train_tracks_every_model(trained_experiment: TrainedExperiment):
    from mlflow import MlflowClient

    client = MlflowClient(trained_experiment.uri)
    for label in ("fm", "xdeepfm", "attention_deepfm"):
        run = client.get_run(trained_experiment.runs[label])
        assert run.info.status == "FINISHED", label
        assert run.data.params["model"] == label
        assert run.data.tags["best_epoch"] == "1"
        assert "test_ndcg_at_10" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1]
        assert {"checkpoints/best.pt", "data/encoders.json"} <= _artifact_paths(
            client, run.info.run_id
        )
    assert client.get_run(trained_experiment.runs["lr_seed7"]).data.params["seed"] == "7"


@pytest.mark.slow
def test_tracking_adds_little_to_an_epoch(trained_experiment: TrainedExperiment):
    """One batched metrics call (+ the best checkpoint's upload) per epoch.

    Under 0.24 s per epoch is under 3% of any epoch of 8 s or more; an epoch of
    the real protocol (500k rows) takes longer than that on 2 cores.
    """
    from mlflow import MlflowClient

    client = MlflowClient(trained_experiment.uri)
    for label, run_id in trained_experiment.runs.items():
        metrics = client.get_run(run_id).data.metrics
        assert 0.0 < metrics["tracking_seconds_per_epoch"] < 0.24, (label, metrics)
        epoch = metrics["epoch_seconds"] + metrics["eval_seconds"]
        assert metrics["tracking_overhead_fraction"] == pytest.approx(
            metrics["tracking_seconds_per_epoch"] / epoch, rel=0.5
        )


# ------------------------------------------------------------------------ loading
LOAD_AND_RANK = textwrap.dedent(
    """
    import json, sys
    import mlflow, mlflow.pytorch, numpy as np, pandas as pd, torch
    from mlflow import MlflowClient

    name = sys.argv[1]
    model = mlflow.pytorch.load_model(f"models:/{name}@champion")  # before any ctr import
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    from ctr.data.movielens import MovieLensPreprocessor

    encoders = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/data/encoders.json")
    pre = MovieLensPreprocessor.from_dict(encoders)
    npz = mlflow.artifacts.download_artifacts(f"runs:/{version.run_id}/data/eval_candidates.npz")
    cands = np.load(npz)
    users, items = cands["test_user_ids"], cands["test_candidate_items"]  # (U,), (U, C)
    U, C = items.shape
    rows = pd.DataFrame({"user_id": np.repeat(users, C), "movie_id": items.reshape(-1)})
    batch = {k: torch.as_tensor(v) for k, v in pre.encode_frame(rows).items()}
    with torch.no_grad():
        scores = model(batch).reshape(U, C)  # logits, column 0 = the held-out positive
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1)  # ties count against the positive
    hit = rank < 10
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2), torch.zeros(()))
    print(json.dumps({
        "run_id": version.run_id,
        "class": type(model).__name__,
        "ctr_file": sys.modules["ctr"].__file__,
        "fields": model.schema.field_names,
        "hr_at_10": hit.double().mean().item(),
        "ndcg_at_10": ndcg.mean().item(),
    }))
    """
)


@pytest.mark.slow
def test_champion_loads_in_a_fresh_process_and_reproduces_test_metrics(
    trained_experiment: TrainedExperiment, tmp_path
):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    name = "deepfm-movielens"
    with tracking_env(trained_experiment.uri):
        result = CliRunner().invoke(
            main,
            [
                "promote",
                "--experiment",
                trained_experiment.name,
                "--filter",
                "params.model = 'deepfm'",
            ],
        )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"models:/{name}@champion"

    script = tmp_path / "load_and_rank.py"
    script.write_text(LOAD_AND_RANK)
    proc = subprocess.run(
        [sys.executable, str(script), name],
        env=subprocess_env(trained_experiment.uri),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    run = MlflowClient(trained_experiment.uri).get_run(out["run_id"])
    assert out["run_id"] == trained_experiment.runs["deepfm"]
    assert out["class"] == "DeepFM"
    # the class came from the code logged with the model, not from this checkout
    assert str(ROOT / "ctr") not in out["ctr_file"] and "code" in out["ctr_file"]
    assert out["hr_at_10"] == pytest.approx(run.data.metrics["test_hr_at_10"], abs=1e-9)
    assert out["ndcg_at_10"] == pytest.approx(run.data.metrics["test_ndcg_at_10"], abs=1e-6)


# ---------------------------------------------------------------------- failures
@pytest.mark.slow
def test_a_run_that_raises_ends_failed_with_the_error(tracking_uri, tmp_path):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            "deepfm",
            "--experiment-name",
            "ctr-tests-failed",
            "--override",
            f"data.data_dir={tmp_path / 'no-such-dir'}",
            f"training.checkpoint_dir={tmp_path}",
        ],
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "no-such-dir" in result.output and "marked FAILED" in result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("ctr-tests-failed")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "no-such-dir" in run.data.tags["error"]
    assert "errors/traceback.txt" in _artifact_paths(client, run.info.run_id)


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_and_keeps_the_best_checkpoint(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    name = "ctr-tests-killed"
    overrides = [
        *FAST_OVERRIDES,
        "training.num_epochs=20",
        "training.early_stopping_patience=0",
        f"training.checkpoint_dir={tmp_path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctr", "train", "--model", "lr", "--experiment-name", name]
        + ["--override", *overrides],
        env=subprocess_env(mlflow_server.uri),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = MlflowClient(mlflow_server.uri)
    try:
        deadline = time.monotonic() + 240
        run_id = None
        while time.monotonic() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name(name)
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and "checkpoints/best.pt" in _artifact_paths(client, runs[0].info.run_id):
                run_id = runs[0].info.run_id
                break
            time.sleep(0.5)
        assert run_id is not None, "no best checkpoint was logged while training"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode != 0
    run = client.get_run(run_id)
    assert run.info.status == "KILLED", output[-2000:]
    assert "SIGTERM" in run.data.tags["error"]
    assert run.data.metrics["val_auc"] > 0.5  # the epochs before the signal are tracked
    assert {"checkpoints/best.pt", "errors/traceback.txt"} <= _artifact_paths(client, run_id)


def test_unreachable_server_fails_fast_naming_the_uri(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from experiments.cli import main

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path)
    with tracking_env(uri):
        t0 = time.perf_counter()
        result = CliRunner().invoke(
            main, ["train", "--model", "deepfm", "--override"] + FAST_OVERRIDES
        )
        elapsed = time.perf_counter() - t0
    assert result.exit_code == 1
    assert uri in result.output and "unset MLFLOW_TRACKING_URI" in result.output
    assert "Traceback" not in result.output
    assert elapsed < 20
    assert not (tmp_path / "mlflow.db").exists()


def test_config_error_creates_no_run(tracking_uri, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        main,
        ["train", "--model", "deepfm", "--experiment-name", "ctr-tests-bad-config"]
        + ["--override", "training.num_epoch=2"],
    )
    assert result.exit_code == 1
    assert "training.num_epoch" in result.output and "num_epochs" in result.output
    assert MlflowClient(tracking_uri).get_experiment_by_name("ctr-tests-bad-config") is None


def test_config_error_closes_the_run_mlflow_run_created(tracking_uri, monkeypatch):
    """Started by `mlflow run` (MLFLOW_RUN_ID set), a bad config marks that run FAILED."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment("ctr-tests-project-bad-config")
    run_id = client.create_run(exp_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        main, ["train", "--model", "fm", "--config", "configs/deepfm_movielens.yaml"]
    )
    assert result.exit_code == 1 and "model_name 'deepfm'" in result.output
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "ConfigError" in run.data.tags["error"]
    assert not run.data.metrics


@pytest.mark.slow
def test_mlflow_run_against_the_embedded_default(tmp_path):
    """No MLFLOW_TRACKING_URI: the run lands in ./mlflow.db of where `mlflow run` was started."""
    from mlflow import MlflowClient

    overrides = [*FAST_OVERRIDES, f"training.checkpoint_dir={tmp_path / 'checkpoints'}"]
    proc = subprocess.run(
        [str(VENV_BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local"]
        + ["-P", "model=lr", "-P", "epochs=1", "-P", f"overrides={' '.join(overrides)}"],
        env=subprocess_env(None),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(["0"])  # `mlflow run` defaults to the Default experiment
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "lr" and params["overrides"] and params["epochs"] == "1"
    assert params["training.num_epochs"] == "1"
    # the optional MLproject params not given are not logged, empty or otherwise
    assert not {"config", "batch_size", "learning_rate"} & set(params)
    assert "" not in params.values() and "''" not in params.values()
    assert "test_ndcg_at_10" in run.data.metrics


# ------------------------------------------------- README walk-through (embedded)
README_SECTION = "## Tracking, comparing and promoting"


@pytest.mark.slow
def test_readme_walkthrough_against_the_embedded_default(tmp_path, monkeypatch):
    """The README's commands in a fresh directory, with no MLFLOW_TRACKING_URI.

    Commands that train for many epochs are run here with the test overrides
    (same command, fewer epochs); the others run exactly as written.
    """
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    commands = readme_commands(README_SECTION)
    executed: set[str] = set()
    (tmp_path / "configs").mkdir()
    for path in (ROOT / "configs").glob("*.yaml"):
        (tmp_path / "configs" / path.name).write_text(path.read_text())
    env = subprocess_env(None)

    # 1. `make train` runs `ctr train --config configs/deepfm_movielens.yaml` (here: 1 epoch)
    make = subprocess.run(["make", "-n", "train"], cwd=ROOT, capture_output=True, text=True)
    train_cmd = "ctr train --config configs/deepfm_movielens.yaml"
    assert train_cmd in make.stdout, make.stdout
    executed.add("make train")
    proc = subprocess.run(
        [str(VENV_BIN / "ctr"), *shlex.split(train_cmd)[1:], "--override", *FAST_OVERRIDES],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("movielens-100k")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and "test_ndcg_at_10" in run.data.metrics
    assert (tmp_path / "checkpoints" / run.info.run_id / "best.pt").is_file()

    # the other training commands: parsed exactly as written, trained elsewhere in the suite
    import experiments.train

    calls = []
    monkeypatch.setattr(experiments.train, "run_training", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(experiments.train, "run_summary", lambda run_id: "")
    for command in commands:
        if command.startswith("ctr train "):
            result = CliRunner().invoke(main, shlex.split(command)[1:])
            assert result.exit_code == 0, (command, result.output)
            executed.add(command)
        if command.startswith("mlflow run . "):
            from mlflow.projects import _project_spec

            argv = shlex.split(command)
            params = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-P")
            project = _project_spec.load_project(str(ROOT))
            project_cmd = project.get_entry_point("main").compute_command(params, None)
            result = CliRunner().invoke(main, shlex.split(project_cmd)[3:])
            assert result.exit_code == 0, (command, result.output)
            executed.add(command)
    assert {k["model"] for _, k in calls} >= {"xdeepfm", "deepfm", "attention_deepfm"}
    monkeypatch.undo()

    # 2. the UI server on the same database
    (server_cmd,) = [c for c in commands if c.startswith("mlflow server ")]
    with readme_server(
        server_cmd,
        "--port 5000",
        "/health",
        tmp_path / "ui-server.log",
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=tmp_path,
    ) as server:
        served = MlflowClient(server.url).search_runs([exp.experiment_id])
        assert [r.info.run_id for r in served] == [run.info.run_id]
        executed.add(server_cmd)

    # 3.-4. compare and promote exactly as written, in the working directory
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    for command in commands:
        if command.startswith(("ctr compare", "ctr promote")):
            result = CliRunner().invoke(main, shlex.split(command)[1:])
            assert result.exit_code == 0, (command, result.output)
            executed.add(command)
            if "--plot" in command:
                assert (tmp_path / "curves.png").stat().st_size > 1000
            if "--format csv" in command:
                assert result.stdout.startswith("run_id,run_name,model")
            assert "compare in the MLflow UI" not in result.output  # no server, no link
    assert result.output.strip().splitlines()[-1] == "models:/deepfm-movielens@champion"

    # 5. the loading snippet, verbatim, in a fresh process
    (snippet,) = readme_blocks(README_SECTION, "python")
    (tmp_path / "snippet.py").write_text(snippet)
    proc = subprocess.run(
        [sys.executable, "snippet.py"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(scores) == 3 and all(0.0 < p < 1.0 for p in scores)

    assert set(commands) == executed, set(commands) - executed
