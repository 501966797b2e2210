"""Shared fixtures: a real MLflow tracking server for the session, small fast configs.

The server is `mlflow server` on 127.0.0.1 and a free port with a SQLite backend
in a temporary directory; it is started at most once per test run (only when a
test asks for it) and stopped by its PID at the end.
"""

from __future__ import annotations

import os

# Before anything imports mlflow: no usage reports from the test suite.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Tiny models, big batches, 1 negative per positive and 99 sampled candidates: one
# epoch on ml-100k takes seconds on 2 cores. (Not the protocol: tests only.) No full
# ranking: scoring 943 users x 1682 movies would take longer than the training.
FAST_OVERRIDES = [
    "features.embedding_dim=4",
    "fm.embed_dim=4",
    "dnn.hidden_units=[16]",
    "cin.layer_sizes=[8]",
    "attention.num_heads=1",
    "attention.attention_dim=4",
    "attention.num_layers=1",
    "data.num_negatives=1",
    "data.num_eval_negatives=99",
    "training.batch_size=4096",
    "training.num_epochs=1",
    "training.full_ranking=false",
    "training.test_full_ranking=false",
    "training.eval_batch_size=131072",
]

# Environment variables that point MLflow somewhere; tests set them explicitly.
_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it exits
    first or does not answer within `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with code {proc.returncode} before answering {url}; "
                f"log:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer on {url} after {timeout:.0f}s; log:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen, grace: float = 15.0, group: bool = False) -> None:
    """SIGTERM the process (group=True: its whole process group, for a server started
    with start_new_session=True), then SIGKILL it if it does not exit in time."""
    if group:  # children share the group (mlflow models serve's uvicorn): all of it goes
        from experiments.server import stop_process_group

        stop_process_group(proc, grace)
        return

    def send(sig: int) -> None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class MlflowServer:
    uri: str
    root: Path
    pid: int


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """A real tracking + registry server for the whole test session."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in _MLFLOW_ENV}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        wait_until_answers(f"{uri}/health", proc, log)
        yield MlflowServer(uri=uri, root=root, pid=proc.pid)
    finally:
        stop_process(proc)


@contextmanager
def tracking_env(uri: str | None) -> Iterator[None]:
    """Point MLflow at `uri` (None: MLflow's embedded default) for the block."""
    saved = {k: os.environ.get(k) for k in _MLFLOW_ENV}
    for key in _MLFLOW_ENV:
        os.environ.pop(key, None)
    if uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def tracking_uri(mlflow_server: MlflowServer) -> Iterator[str]:
    """The session server's URI, set as MLFLOW_TRACKING_URI for one test."""
    with tracking_env(mlflow_server.uri):
        yield mlflow_server.uri


def subprocess_env(uri: str | None, **extra: str) -> dict[str, str]:
    """Environment for a child process: the venv first on PATH, MLflow at `uri`."""
    env = {k: v for k, v in os.environ.items() if k not in _MLFLOW_ENV}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    env.update(extra)
    return env


@dataclass
class TrainedExperiment:
    """Runs trained once per session on the session server, shared by the tests."""

    uri: str
    name: str
    runs: dict[str, str]  # label -> run id
    seconds: dict[str, float]  # label -> wall time of its training command
    checkpoint_root: Path


@pytest.fixture(scope="session")
def trained_experiment(mlflow_server: MlflowServer, tmp_path_factory) -> TrainedExperiment:
    """One `mlflow run` (deepfm) and `ctr train` for the other models.

    Labels: deepfm (via `mlflow run`), lr and lr_seed7 (2 epochs each: the
    per-epoch checks), fm, xdeepfm, attention_deepfm (via `ctr train`,
    in-process); 1 epoch unless said otherwise.
    """
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    name = "ctr-tests"
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    overrides = [*FAST_OVERRIDES, f"training.checkpoint_dir={checkpoints}"]
    runs: dict[str, str] = {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            str(VENV_BIN / "mlflow"),
            "run",
            str(ROOT),
            "--env-manager",
            "local",
            "--experiment-name",
            name,
            "-P",
            "model=deepfm",
            "-P",
            f"overrides={' '.join(overrides)}",
        ],
        env=subprocess_env(mlflow_server.uri),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds["deepfm"] = time.perf_counter() - t0
    assert proc.returncode == 0, f"mlflow run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    runner = CliRunner()
    jobs = [
        ("lr", ["--model", "lr", "--epochs", "2"]),
        ("lr_seed7", ["--model", "lr", "--epochs", "2", "--seed", "7"]),
        ("fm", ["--model", "fm"]),
        ("xdeepfm", ["--model", "xdeepfm"]),
        ("attention_deepfm", ["--model", "attention_deepfm"]),
    ]
    with tracking_env(mlflow_server.uri):
        for label, args in jobs:
            t0 = time.perf_counter()
            result = runner.invoke(
                main,
                ["train", *args, "--experiment-name", name, "--run-name", label, "--override"]
                + overrides,
                catch_exceptions=False,
            )
            seconds[label] = time.perf_counter() - t0
            assert result.exit_code == 0, result.output
        client = MlflowClient(mlflow_server.uri)
        experiment = client.get_experiment_by_name(name)
        for run in client.search_runs([experiment.experiment_id]):
            label = run.info.run_name if run.info.run_name in dict(jobs) else "deepfm"
            assert label not in runs, f"two runs labelled {label}"
            runs[label] = run.info.run_id
    assert sorted(runs) == sorted(["deepfm", *dict(jobs)]), runs
    return TrainedExperiment(mlflow_server.uri, name, runs, seconds, checkpoints)
