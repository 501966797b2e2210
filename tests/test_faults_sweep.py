"""A tracking fault during a `ctr sweep` trial, with real processes: a trial trains
through `ctr train`'s code (experiments.train.run_training), so its tracking requests
are bounded by CTR_TRACKING_TIMEOUT and a failure ends it with a TrackingFailedError.

The server, the child process and the broken artifact store are those of
tests/test_faults_server.py (its own `ctr server` here, for this module).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest

from experiments.tracking_errors import TIMEOUT_ENV
from tests.test_faults_server import (
    EXPERIMENT,
    SHORT_TIMEOUT,
    Server,
    Training,
    _assert_loads,
    _client,
    _overrides,
    _wait_for_epoch,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("faults-sweep") / "srv")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_sweep_trial_whose_artifact_store_breaks_fails_the_trial_and_the_sweep(server, tmp_path):
    """A trial trains through ctr train's code: its requests give up within
    CTR_TRACKING_TIMEOUT, the trial's run ends FAILED (sweep_state=failed), Optuna counts
    the trial failed, the sweep stops with its parent run FAILED, and the one-line error
    is followed by the `ctr sweep` that continues the sweep (not a `ctr train` of the
    trial's run, which would score it on test outside the study)."""
    import optuna

    server.ensure_running()
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "lr.yaml").write_text(
        "model_name: lr\nshared: false\ndimensions:\n"
        "  training.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    overrides = [o for o in _overrides(tmp_path / "checkpoints") if "learning_rate" not in o]
    args = [
        *["--model", "lr", "--name", "faults-sweep", "--trials", "1", "--storage", storage],
        *["--search-dir", str(tmp_path / "space"), "--experiment-name", EXPERIMENT],
        *["--override", *overrides],
    ]
    artifacts = server.directory / "artifacts"
    aside = server.directory / "artifacts.aside"
    sweep = Training(
        tmp_path, "sweep", args, server.uri, command="sweep", **{TIMEOUT_ENV: SHORT_TIMEOUT}
    )
    try:
        run_id = sweep.run_id()
        _wait_for_epoch(server.uri, run_id, 1)
        artifacts.rename(aside)
        artifacts.write_text("not a directory\n")
        assert sweep.proc.poll() is None, "the trial ended before its artifact store broke"
        code = sweep.wait(timeout=240)
    finally:
        sweep.kill()
        if aside.exists():
            artifacts.unlink(missing_ok=True)
            aside.rename(artifacts)
    stderr = sweep.stderr.read_text()
    assert code == 1, sweep.output()
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    assert f"tracking run {run_id}" in errors[0]
    assert "while storing an artifact: the server answered HTTP 500" in errors[0]
    assert "the trial counts as failed" in stderr and "MLFLOW_RUN_ID=" not in stderr
    command = next(line.strip() for line in stderr.splitlines() if "ctr sweep " in line)
    assert shlex.split(command)[:8] == [
        *["ctr", "sweep", "--model", "lr", "--name", "faults-sweep", "--trials", "1"]
    ]
    client = _client(server.uri)
    trial = client.get_run(run_id)
    assert trial.info.status == "FAILED" and trial.data.tags["sweep_state"] == "failed"
    assert "mlflow-artifacts" in trial.data.tags["error"]
    parent = client.get_run(trial.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED" and parent.data.tags["sweep"] == "faults-sweep"
    study = optuna.load_study(study_name="faults-sweep", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
    _assert_loads(tmp_path / "checkpoints" / run_id / "best.pt")
