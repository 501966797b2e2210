"""Faults of the tracking server during `ctr train`, with real processes.

One `ctr server` (SQLite, in a temporary --dir) serves the module; `ctr train`
runs as a child process, as a user runs it. A server "killed" here is SIGKILLed
(the MLflow server's process group, then `ctr server`), as a crash or the OOM
killer would: nothing is stopped cleanly. A restart is `ctr server` on the same
--dir and the same --port, so the clients' MLFLOW_TRACKING_URI stays right.

- killed and restarted: the training goes on through MLflow's HTTP retries, the
  run ends FINISHED with every epoch's metrics;
- killed for good: the run ends within CTR_TRACKING_TIMEOUT (20 s here) of its
  first failed request, with a one-line error, the best checkpoint intact and
  the command that resumes it; run with the server back, that command finishes
  the same MLflow run with the test metrics of an uninterrupted run;
- the artifact store broken mid-run: the run ends FAILED in MLflow with a clear
  error, its local checkpoints intact (in a sweep trial: tests/test_faults_sweep.py).

Tiny budgets: logistic regression, 4 epochs of 512-row batches (1-3 s each:
long enough for the server to die while one trains), one torch thread, no full
ranking. The slow part is starting servers (about 13 s each on an idle machine).
The pieces without servers are tested in tests/test_tracking_errors.py.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.artifacts import CANDIDATES_ARTIFACT
from experiments.server import EXPORT_PREFIX
from experiments.tracking_errors import TIMEOUT_ENV
from tests.conftest import FAST_OVERRIDES, ROOT, VENV_BIN, stop_process, subprocess_env

EPOCHS = 4
EXPERIMENT = "faults"
SHORT_TIMEOUT = "20"  # CTR_TRACKING_TIMEOUT of the runs whose server does not come back
_CHANGED = {"training.num_epochs", "training.batch_size"}


def _overrides(checkpoints: Path) -> list[str]:
    kept = [o for o in FAST_OVERRIDES if o.split("=", 1)[0] not in _CHANGED]
    return [
        *kept,
        f"training.num_epochs={EPOCHS}",
        "training.batch_size=512",  # small batches: epochs long enough to kill the server in
        "training.num_threads=1",
        f"training.checkpoint_dir={checkpoints}",
    ]


def _wait(condition, timeout: float, what: str, interval: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------ processes
class Server:
    """`ctr server` on one --dir; started, killed outright and restarted by the tests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0  # 0 until the first start picked one; kept for the restarts
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.starts += 1
        self.out = self.directory.parent / f"ctr-server-{self.starts}.out"
        with open(self.out, "w") as fh:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "ctr"), "server", "--dir", str(self.directory)]
                + ["--port", str(self.port)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=subprocess_env(None),
                cwd=ROOT,
            )
        try:
            line = _wait(self._export_line, 300, f"ctr server to print its URI ({self.out})", 0.3)
        except BaseException:
            self.stop()
            raise
        self.port = int(line.rsplit(":", 1)[1])

    def _export_line(self) -> str | None:
        text = self.out.read_text()
        for line in text.splitlines():
            if line.startswith(EXPORT_PREFIX):
                return line
        if self.proc.poll() is not None:
            raise AssertionError(f"ctr server exited with {self.proc.returncode}:\n{text}")
        return None

    def ensure_running(self) -> None:
        if not self.alive():
            self.start()

    def kill(self) -> None:
        """SIGKILL the MLflow server's process group (mlflow server, uvicorn), then
        `ctr server` itself: a crash, with no clean stop of anything."""
        mlflow_pid = int(re.search(r"ready \(pid (\d+)\)", self.out.read_text()).group(1))
        os.killpg(mlflow_pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=60.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """One server directory for the module; each test starts the server if the one
    before left it dead."""
    srv = Server(tmp_path_factory.mktemp("faults") / "srv")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


class Training:
    """`ctr train` (or another ctr `command`) in a child process, its stdout and stderr
    in files."""

    def __init__(
        self, tmp: Path, name: str, args: list[str], uri: str, command: str = "train", **env: str
    ) -> None:
        self.stdout, self.stderr = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "ctr"), command, *args],
                stdout=out,
                stderr=err,
                env=subprocess_env(uri, **env),
                cwd=ROOT,
            )

    def run_id(self) -> str:
        def found() -> str | None:
            text = self.stdout.read_text() + self.stderr.read_text()
            match = re.search(r"run ([0-9a-f]{32}) \(experiment", text)
            assert match or self.proc.poll() is None, self.output()
            return match.group(1) if match else None

        return _wait(found, 180, "ctr train to start its run")

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return f"stdout:\n{self.stdout.read_text()[-3000:]}\nstderr:\n{self.stderr.read_text()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _train(tmp: Path, name: str, uri: str, **env: str) -> Training:
    args = ["--model", "lr", "--experiment-name", EXPERIMENT, "--run-name", name, "--override"]
    return Training(tmp, name, args + _overrides(tmp / "checkpoints"), uri, **env)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _wait_for_epoch(uri: str, run_id: str, epoch: int) -> None:
    """Until MLflow holds the run's metrics of `epoch` (polled through the server)."""

    def logged() -> bool:
        history = _client(uri).get_metric_history(run_id, "val_ndcg_at_10")
        return any(m.step >= epoch for m in history)

    _wait(logged, 180, f"epoch {epoch} of run {run_id} in MLflow")


def _wait_for_artifact(uri: str, run_id: str, path: str) -> None:
    folder = path.rsplit("/", 1)[0]

    def logged() -> bool:
        return path in {f.path for f in _client(uri).list_artifacts(run_id, folder)}

    _wait(logged, 180, f"{path} of run {run_id} in MLflow", interval=0.1)


def _epochs_logged(uri: str, run_id: str, key: str) -> list[int]:
    """The steps of a metric; a step logged twice (a request repeated after the server
    took it and died) must carry the same value."""
    values: dict[int, float] = {}
    for m in _client(uri).get_metric_history(run_id, key):
        assert values.setdefault(m.step, m.value) == m.value, (key, m.step)
    return sorted(values)


# The final metrics of an uninterrupted run of this module's config, by the tests
# that train one (the restart test trains without an interruption of training).
_UNINTERRUPTED: dict[str, float] = {}


def _uninterrupted_test_ndcg(tmp: Path, uri: str) -> float:
    if "test_ndcg_at_10" not in _UNINTERRUPTED:
        reference = _train(tmp, "reference", uri)
        assert reference.wait() == 0, reference.output()
        run = _client(uri).get_run(reference.run_id())
        _UNINTERRUPTED["test_ndcg_at_10"] = run.data.metrics["test_ndcg_at_10"]
    return _UNINTERRUPTED["test_ndcg_at_10"]


def _assert_loads(checkpoint: Path) -> dict:
    from ctr.utils import load_checkpoint

    state = load_checkpoint(checkpoint, "cpu", required=("model_state", "config", "schema"))
    assert state["epoch"] >= 1
    return state


# ---------------------------------------------------------------------- tests
@pytest.mark.slow
def test_a_server_killed_and_restarted_loses_nothing(server, tmp_path):
    server.ensure_running()
    training = _train(tmp_path, "restarted", server.uri)  # default CTR_TRACKING_TIMEOUT
    try:
        run_id = training.run_id()
        # the run's last request before its first epoch: then it trains, and nothing
        # is in flight when the server dies
        _wait_for_artifact(server.uri, run_id, CANDIDATES_ARTIFACT)
        server.kill()
        killed_at = time.time()
        epoch_1_after_the_kill = "epoch 1/" not in training.stdout.read_text()
        assert training.proc.poll() is None, "the run ended before the server was killed"
        # the epoch's metrics go out right after this line, to a dead server
        _wait(lambda: "epoch 1/" in training.stdout.read_text(), 180, "epoch 1")
        server.start()
        back_at = time.time()
        assert training.wait() == 0, training.output()
    finally:
        training.kill()
    print(f"server down for {back_at - killed_at:.1f} s")
    client = _client(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("val_ndcg_at_10", "train_loss", "val_auc"):
        assert _epochs_logged(server.uri, run_id, key) == list(range(1, EPOCHS + 1)), key
    if epoch_1_after_the_kill:  # (else the kill came late, and the proof with it)
        first = min(m.timestamp for m in client.get_metric_history(run_id, "train_loss"))
        assert killed_at * 1000 <= first <= back_at * 1000  # sent while the server was down
    assert "test_ndcg_at_10" in run.data.metrics
    _UNINTERRUPTED["test_ndcg_at_10"] = run.data.metrics["test_ndcg_at_10"]


@pytest.mark.slow
def test_a_server_gone_for_good_ends_the_run_in_time_and_it_resumes_exactly(server, tmp_path):
    server.ensure_running()
    training = _train(tmp_path, "abandoned", server.uri, **{TIMEOUT_ENV: SHORT_TIMEOUT})
    try:
        run_id = training.run_id()
        _wait_for_epoch(server.uri, run_id, 1)
        server.kill()
        killed = time.monotonic()
        code = training.wait(timeout=180)
        ended_after = time.monotonic() - killed
    finally:
        training.kill()
    print(f"the run ended {ended_after:.1f} s after the server was killed")
    stderr = training.stderr.read_text()
    assert code == 1, training.output()
    # CTR_TRACKING_TIMEOUT for the failed request, plus the rest of the epoch it was in
    assert ended_after < float(SHORT_TIMEOUT) + 25, training.output()
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    assert f"tracking run {run_id}" in errors[0] and "connection refused" in errors[0]
    assert "could not be marked FAILED" in errors[0]
    checkpoints = tmp_path / "checkpoints" / run_id
    best = _assert_loads(checkpoints / "best.pt")
    last = _assert_loads(checkpoints / "last.pt")
    assert best["epoch"] <= last["epoch"] < EPOCHS

    resume = next(line.strip() for line in stderr.splitlines() if "MLFLOW_RUN_ID=" in line)
    assert f"training.resume_from={checkpoints.resolve() / 'last.pt'}" in resume
    assign, *argv = shlex.split(resume)
    assert assign == f"MLFLOW_RUN_ID={run_id}" and argv[:2] == ["ctr", "train"]

    server.start()
    resumed = subprocess.run(
        [str(VENV_BIN / "ctr"), *argv[1:]],
        env=subprocess_env(server.uri, MLFLOW_RUN_ID=run_id),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    run = _client(server.uri).get_run(run_id)  # the same run, finished
    assert run.info.status == "FINISHED"
    assert run.data.tags["ctr.resumed_from"] == str(checkpoints.resolve() / "last.pt")
    assert _epochs_logged(server.uri, run_id, "val_ndcg_at_10") == list(range(1, EPOCHS + 1))
    expected = _uninterrupted_test_ndcg(tmp_path, server.uri)
    assert run.data.metrics["test_ndcg_at_10"] == expected


@pytest.mark.slow
def test_an_artifact_store_that_breaks_mid_run_fails_the_run(server, tmp_path):
    """The server stays up but can no longer write artifacts. Under root, chmod
    does not stop writes (root ignores permission bits), and chattr +i needs a
    file system and a capability CI may not have; so the artifact directory is
    moved aside and a regular file put in its place: every write under it then
    fails with NotADirectoryError, for any user, and the server answers HTTP 500."""
    server.ensure_running()
    artifacts = server.directory / "artifacts"
    aside = server.directory / "artifacts.aside"
    training = _train(tmp_path, "unwritable", server.uri, **{TIMEOUT_ENV: SHORT_TIMEOUT})
    try:
        run_id = training.run_id()
        _wait_for_epoch(server.uri, run_id, 1)
        artifacts.rename(aside)
        artifacts.write_text("not a directory\n")
        assert training.proc.poll() is None, "the run ended before its artifact store broke"
        code = training.wait(timeout=180)
    finally:
        training.kill()
        if aside.exists():
            artifacts.unlink(missing_ok=True)
            aside.rename(artifacts)
    stderr = training.stderr.read_text()
    assert code == 1, training.output()
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    assert "while storing an artifact: the server answered HTTP 500" in errors[0]
    assert "the run is marked FAILED" in errors[0]
    run = _client(server.uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert "mlflow-artifacts" in run.data.tags["error"]  # the request that failed
    _assert_loads(tmp_path / "checkpoints" / run_id / "best.pt")
