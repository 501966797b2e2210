"""The `ctr` click group: parsing, the MLproject's commands, fast help, the override
forms every command shares, and how errors reach the terminal."""

from __future__ import annotations

import json
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
    """Replace run_training by a recorder of its arguments (and the run's summary,
    which reads the run back from MLflow, by a stand-in)."""
    import experiments.train

    calls: list[dict] = []

    def fake_run_training(config_path, overrides=(), **kwargs):
        calls.append({"config_path": config_path, "overrides": list(overrides), **kwargs})
        return "0123456789abcdef"

    monkeypatch.setattr(experiments.train, "run_training", fake_run_training)
    monkeypatch.setattr(experiments.train, "run_summary", lambda run_id: f"summary of {run_id}")
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
    assert "summary of 0123456789abcdef" in one.output


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
        # undeclared (only `model` is): MLflow passes each on as --NAME VALUE
        "epochs": "3",
        "batch_size": "256",
        "learning_rate": "1.0e-4",
        "overrides": "training.batch_size=512 dnn.hidden_units=[64,32]",
        "seed": "7",
    }
    given = runner.invoke(main, _project_command("main", params))
    assert given.exit_code == 0, given.output
    call = captured[-1]
    assert call["model"] == "xdeepfm" and call["config_path"] is None
    assert call["overrides"] == [
        "training.batch_size=512",
        "dnn.hidden_units=[64,32]",
        "training.num_epochs=3",
        "training.batch_size=256",
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
    """MLflow logs every declared MLproject parameter, empty or not, so only `model`
    is declared; the others are logged only when given."""
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(ROOT))
    main_entry = project.get_entry_point("main")
    assert set(main_entry.parameters) == {"model"}
    logged, passed_on = main_entry.compute_parameters({}, None)
    assert logged == {"model": "deepfm"} and passed_on == {}
    assert project.env_type == "conda_env" and project.env_config_path.endswith("conda.yaml")
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"]
    assert "-e ." in conda["dependencies"][-1]["pip"]


def test_evaluate_a_file_that_is_no_checkpoint_names_it_and_exits_1(tmp_path):
    import numpy as np

    text = tmp_path / "notes.txt"
    text.write_text("epoch 3\nloss 0.25\n")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path in (text, noise):
        result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(path)])
        assert result.exit_code == 1, result.output
        assert f"{path} is not a ctr checkpoint" in result.output
        assert "Traceback" not in result.output


def test_train_with_an_empty_config_file_names_it_and_exits_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "empty.yaml").write_text("# nothing here yet\n")
    result = CliRunner().invoke(main, ["train", "--config", "empty.yaml"])
    assert result.exit_code == 1, result.output
    assert "config file empty.yaml is empty" in result.output
    assert "ctr train --model NAME` without --config" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # no run for a bad config


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


# ------------------------------------------------------------- override forms
# Two invalid values on real config keys: the config's validation names every key
# it got, so both pairs reaching it shows in the message, and nothing is trained.
OVERRIDE_FORMS = {
    "repeated": ["--override", "training.num_epochs=0", "--override", "training.batch_size=0"],
    "after one flag": ["--override", "training.num_epochs=0", "training.batch_size=0"],
}


def _override_command(command: str, tmp_path) -> list[str]:
    if command == "train":
        return ["train", "--model", "lr"]
    if command == "sweep":
        storage = f"sqlite:///{tmp_path / 'sweep.db'}"
        return ["sweep", "--model", "lr", "--trials", "1", "--storage", storage]
    readme = tmp_path / "README.md"
    readme.write_text("# ctr\n")
    return ["results", "--models", "lr", "--seeds", "1", "--no-track"] + [
        "--readme",
        str(readme),
        "--output",
        str(tmp_path / "results.json"),
    ]


OVERRIDE_COMMANDS = ("train", "results", "sweep")


def test_every_command_with_overrides_is_tested_here():
    takes = {
        name
        for name, cmd in main.commands.items()
        if any(p.name == "overrides" for p in cmd.params)
    }
    assert takes == set(OVERRIDE_COMMANDS)
    for name in takes:  # each gets both forms from the one shared option
        params = {p.name: p for p in main.commands[name].params}
        assert params["overrides"].multiple and params["more_overrides"].nargs == -1


@pytest.mark.parametrize("form", list(OVERRIDE_FORMS))
@pytest.mark.parametrize("command", OVERRIDE_COMMANDS)
def test_overrides_reach_the_config_in_both_forms(command, form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    args = [*_override_command(command, tmp_path), *OVERRIDE_FORMS[form]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "invalid configuration" in result.output
    assert "training.num_epochs" in result.output and "training.batch_size" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("command", OVERRIDE_COMMANDS)
def test_a_key_given_in_both_forms_is_a_usage_error(command, tmp_path):
    args = _override_command(command, tmp_path)
    result = CliRunner().invoke(
        main, [*args, "--override", "seed=1", "--override", "a=2", "seed=3"]
    )
    assert result.exit_code == 2 and "['seed'] more than once" in result.output
    stray = CliRunner().invoke(main, [*args, "--override", "seed=1", "oops"])
    assert stray.exit_code == 2 and "expected KEY=VALUE overrides, got ['oops']" in stray.output


# ------------------------------------------------------------- error handling
def test_every_project_error_is_a_ctr_error_and_keeps_its_builtin_base():
    """The CLI catches CTRError by type; every `class ...Error` of ctr/ and experiments/
    must be one, and still the built-in error it was before."""
    import importlib
    import re

    from ctr.errors import CTRError

    found = {}
    for path in sorted([*(ROOT / "ctr").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]):
        for name in re.findall(r"^class (\w+Error)\(", path.read_text(), flags=re.M):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name] = getattr(importlib.import_module(module), name)
    assert {"ConfigError", "DataNotFoundError", "RunQueryError", "PromotionError"} <= set(found)
    assert {"ServingInputError", "TrackingServerError", "ResultsError"} <= set(found)
    for name, cls in found.items():
        assert issubclass(cls, CTRError), name
        assert issubclass(cls, ValueError), name
    assert issubclass(found["DataNotFoundError"], FileNotFoundError)
    assert issubclass(found["PromotionError"], RuntimeError)
    assert issubclass(found["TrackingServerError"], RuntimeError)
    assert issubclass(found["TrainingDivergedError"], FloatingPointError)


# The tests below run the real command line in a child process, so what they check
# is what reaches the terminal. The user error: --from-json names a missing file.
FAKE_BUG = (
    "import experiments.results\n"
    "def fake_failure(*args, **kwargs):\n"
    "    raise ZeroDivisionError('a fake failure standing in for a bug')\n"
    "experiments.results.format_table = fake_failure\n"
)


def _ctr(args: list[str], tmp_path, setup: str = "", **env: str) -> subprocess.CompletedProcess:
    code = f"{setup}import sys\nfrom experiments.cli import main\nmain(sys.argv[1:], prog_name='ctr')\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(None, PYTHONPATH=str(ROOT), **env),
        timeout=120,
    )


@pytest.mark.parametrize("env", [{}, {"CTR_DEBUG": "0"}])
def test_a_user_error_is_one_line_and_exit_1(tmp_path, env):
    (tmp_path / "README.md").write_text("# ctr\n")
    proc = _ctr(["results", "--from-json", "missing.json"], tmp_path, **env)
    assert proc.returncode == 1
    assert proc.stderr == "Error: results JSON not found: missing.json\n"


@pytest.mark.parametrize("how", ["--debug", "CTR_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_user_error(tmp_path, how):
    (tmp_path / "README.md").write_text("# ctr\n")
    flag, env = (["--debug"], {}) if how == "--debug" else ([], {"CTR_DEBUG": "1"})
    proc = _ctr([*flag, "results", "--from-json", "missing.json"], tmp_path, **env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "ctr.errors.MissingFileError: results JSON not found: missing.json" in proc.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    """format_table is replaced by a fake failure (ZeroDivisionError): not a project
    error, so no one-line message hides where it came from."""
    (tmp_path / "README.md").write_text("# ctr\n")
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"runs": {}, "popularity": {}, "seeds": [1]}))
    proc = _ctr(["results", "--from-json", str(saved)], tmp_path, setup=FAKE_BUG)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "in write_results" in proc.stderr
    assert proc.stderr.rstrip().endswith("ZeroDivisionError: a fake failure standing in for a bug")
    assert not any(line.startswith("Error:") for line in proc.stderr.splitlines())
