"""The `ctr` click group: parsing, the MLproject's commands, fast help."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from experiments.cli import main
from tests.conftest import ROOT, VENV_BIN, subprocess_env


@pytest.fixture
def captured(monkeypatch) -> list[dict]:
    """Replace run_training by a recorder of its arguments."""
    import experiments.train

    calls: list[dict] = []

    def fake_run_training(config_path, overrides=(), **kwargs):
        calls.append({"config_path": config_path, "overrides": list(overrides), **kwargs})
        return "0123456789abcdef"

    monkeypatch.setattr(experiments.train, "run_training", fake_run_training)
    return calls


def test_help_is_fast_and_imports_neither_torch_nor_mlflow():
    code = (
        "import sys, experiments.cli; "
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    for cmd in ([str(VENV_BIN / "ctr"), "--help"], [sys.executable, "-m", "ctr", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(None))
        assert out.returncode == 0, out.stderr
        for command in ("train", "compare", "promote"):
            assert command in out.stdout


def test_override_is_repeatable_and_takes_more_key_values(captured):
    runner = CliRunner()
    one = runner.invoke(
        main,
        ["train", "--config", "c.yaml", "--override", "a.b=1", "--override", "c=[1, 2]"],
    )
    two = runner.invoke(main, ["train", "--config", "c.yaml", "--override", "a.b=1", "c=[1, 2]"])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert captured[0]["overrides"] == captured[1]["overrides"] == ["a.b=1", "c=[1, 2]"]
    assert captured[0]["config_path"] == "c.yaml"
    assert captured[0]["experiment_name"] == "movielens-100k"
    assert "run 0123456789abcdef finished" in one.output


def test_train_usage_errors(captured):
    runner = CliRunner()
    stray = runner.invoke(main, ["train", "--config", "c.yaml", "--override", "a=1", "oops"])
    assert stray.exit_code == 2 and "KEY=VALUE" in stray.output
    nothing = runner.invoke(main, ["train"])
    assert nothing.exit_code == 2 and "--config" in nothing.output
    assert captured == []


def _project_command(entry_point: str, params: dict[str, str]) -> list[str]:
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(ROOT))
    command = project.get_entry_point(entry_point).compute_command(params, None)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "ctr"], command
    return argv[3:]


def test_mlproject_main_maps_parameters_to_ctr_train(captured):
    runner = CliRunner()
    defaults = runner.invoke(main, _project_command("main", {}))
    assert defaults.exit_code == 0, defaults.output
    assert captured[-1]["config_path"] is None and captured[-1]["model"] == "deepfm"
    assert captured[-1]["overrides"] == []

    params = {
        "model": "xdeepfm",
        "epochs": "3",
        "learning_rate": "1.0e-4",
        "overrides": "training.batch_size=512 dnn.hidden_units=[64,32]",
        "seed": "7",  # undeclared: MLflow passes it on as --seed 7
    }
    given = runner.invoke(main, _project_command("main", params))
    assert given.exit_code == 0, given.output
    call = captured[-1]
    assert call["model"] == "xdeepfm" and call["config_path"] is None
    assert call["overrides"] == [
        "training.batch_size=512",
        "dnn.hidden_units=[64,32]",
        "training.num_epochs=3",
        "training.learning_rate=1.0e-4",
        "seed=7",
    ]


def test_mlproject_compare_and_promote_entry_points():
    assert _project_command("compare", {}) == [
        "compare",
        "--experiment",
        "movielens-100k",
        "--metric",
        "val_ndcg_at_10",
    ]
    assert _project_command("promote", {"experiment": "x"})[:3] == ["promote", "--experiment", "x"]


def test_mlproject_declares_no_param_that_clashes_with_logged_params():
    """MLflow logs every declared MLproject parameter; the run logs `seed` itself."""
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(ROOT))
    declared = set(project.get_entry_point("main").parameters)
    assert declared == {"model", "config", "epochs", "batch_size", "learning_rate", "overrides"}
    assert project.env_type == "conda_env" and project.env_config_path.endswith("conda.yaml")
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"]
    assert "-e ." in conda["dependencies"][-1]["pip"]


def test_config_errors_exit_1_without_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        main, ["train", "--model", "deepfm", "--override", "training.optimizer=adamx"]
    )
    assert result.exit_code == 1
    assert "training.optimizer" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists()  # nothing tracked for a bad config
    mismatch = CliRunner().invoke(
        main, ["train", "--model", "fm", "--config", str(ROOT / "configs/deepfm_movielens.yaml")]
    )
    assert mismatch.exit_code == 1 and "model=deepfm" in mismatch.output
