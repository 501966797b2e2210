"""The embedded SQLite store survives several `ctr train` started at once
(experiments/store.py): one process creates the tables under a file lock, the
others wait for it; `database is locked` is retried."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time

import pytest

from experiments.store import (
    TrackingStoreLockError,
    file_lock,
    prepare_tracking_store,
    retry_when_locked,
    sqlite_path,
)
from tests.conftest import FAST_OVERRIDES, VENV_BIN, subprocess_env

N_PROCESSES = 6


def test_sqlite_path_of_tracking_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:////abs/dir/mlflow.db").as_posix() == "/abs/dir/mlflow.db"
    assert sqlite_path("sqlite:///mlflow.db") == tmp_path / "mlflow.db"
    for uri in ("http://127.0.0.1:5000", "postgresql://u@h/db", "sqlite://", "sqlite:///:memory:"):
        assert sqlite_path(uri) is None, uri


def test_prepare_leaves_other_stores_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prepare_tracking_store("http://127.0.0.1:9") == "http://127.0.0.1:9"  # nothing opened
    assert list(tmp_path.iterdir()) == []


def test_file_lock_excludes_a_second_holder_and_names_the_file(tmp_path):
    lock = tmp_path / "mlflow.db.lock"
    with file_lock(lock):
        # flock locks belong to the open file: a second open in this process conflicts too
        with pytest.raises(TrackingStoreLockError, match="mlflow.db.lock"):
            with file_lock(lock, timeout=0.3):
                pass
    with file_lock(lock, timeout=0.3):  # released with the block
        pass


def test_retry_when_locked_waits_for_a_real_sqlite_writer(tmp_path):
    db = tmp_path / "x.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    attempts = []

    def insert() -> None:
        attempts.append(time.monotonic())
        with sqlite3.connect(db, timeout=0) as conn:  # no wait of its own: fails at once
            conn.execute("INSERT INTO t VALUES (1)")

    retry_when_locked(insert)
    assert len(attempts) > 1  # it was locked at first, and the retry got through
    assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)
    holder.close()

    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # not retried
        retry_when_locked(lambda: sqlite3.connect(db).execute("SELECT * FROM nope"))


@pytest.mark.slow
def test_parallel_train_on_a_fresh_default_store(tmp_path):
    """N `ctr train` at once in a fresh directory, MLflow's default ./mlflow.db:
    all finish, no tracebacks, N finished runs with their metrics in one experiment.
    (Without the lock most of them died in MLflow's first-use migration.)"""
    from mlflow import MlflowClient

    name = "ctr-tests-parallel"
    overrides = [
        *FAST_OVERRIDES,
        "training.num_threads=1",
        f"training.checkpoint_dir={tmp_path / 'checkpoints'}",
    ]
    procs = [
        subprocess.Popen(
            [str(VENV_BIN / "ctr"), "train", "--model", "lr", "--experiment-name", name]
            + ["--run-name", f"p{i}", "--override", *overrides],
            env=subprocess_env(None),  # no MLFLOW_TRACKING_URI: ./mlflow.db of the cwd
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_PROCESSES)
    ]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {i} exited {proc.returncode}:\n{err[-4000:]}"
        assert "Traceback" not in err, f"process {i}:\n{err[-4000:]}"
        assert "lr: best epoch 1 of 1" in out, out[-2000:]  # the summary, read from the store

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name == name]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"p{i}" for i in range(N_PROCESSES)]
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        assert "test_ndcg_at_10" in run.data.metrics and "best_val_ndcg_at_10" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1
