"""`ctr server`: real servers (MLflow, PostgreSQL) started as `ctr server` is run,
a run logged through them, a stop by SIGTERM, and a second start that finds the run.

The PostgreSQL tests need Debian's server binaries (`make install` or .ci/run
installs them) and skip, saying so, where they are absent. Under root the
cluster runs as the system user postgres, who cannot enter pytest's temporary
directories (mode 700): those tests serve from a directory under /tmp that
everyone may enter.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from experiments.cli import main
from experiments.server import EXPORT_PREFIX
from tests.conftest import ROOT, VENV_BIN, stop_process, subprocess_env


def _postgres_bindir() -> Path | None:
    from experiments.postgres import PostgresError, find_server_bindir

    try:
        return find_server_bindir()
    except PostgresError:
        return None


needs_postgres = pytest.mark.skipif(
    _postgres_bindir() is None,
    reason="PostgreSQL server binaries absent (no /usr/lib/postgresql/*/bin/initdb): "
    "apt-get install -y postgresql, or `make install`",
)


@dataclass
class Started:
    proc: subprocess.Popen
    uri: str
    out: Path


def _wait_for_uri(proc: subprocess.Popen, out: Path, timeout: float = 240.0) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for line in out.read_text().splitlines():
            if line.startswith(EXPORT_PREFIX):
                return line[len(EXPORT_PREFIX) :]
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(
        f"ctr server printed no tracking URI (exit {proc.poll()}):\n{out.read_text()}"
    )


@contextmanager
def ctr_server(directory: Path, *args: str) -> Iterator[Started]:
    """`ctr server --dir DIRECTORY --port 0 ARGS` until its export line; stopped on exit."""
    out = directory.parent / f"{directory.name}.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen(
            [str(VENV_BIN / "ctr"), "server", "--dir", str(directory), "--port", "0", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=subprocess_env(None),
            cwd=ROOT,
        )
    try:
        yield Started(proc, _wait_for_uri(proc, out), out)
    finally:
        stop_process(proc, grace=60.0)


def _processes_naming(directory: Path) -> list[str]:
    """Live processes whose command line names `directory`: ctr server, mlflow server
    (its artifacts path), uvicorn's parent, postgres (-D DIR/postgres/data)."""
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile; a zombie's cmdline is empty
        if str(directory) in cmdline and int(proc_dir.name) != os.getpid():
            found.append(f"{proc_dir.name}: {cmdline}")
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited


def _tree(*roots: int) -> set[int]:
    """The roots and all their descendants now alive."""
    parents = {}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(proc_dir.name))
        if stat is not None:
            parents[int(proc_dir.name)] = stat[1]
    tree = set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        if not more:
            return {pid for pid in tree if _alive(pid)}
        tree |= more


def _stop_and_check(started: Started, directory: Path) -> None:
    """SIGTERM: exit code 0, and nothing it started is left: none of the processes
    under it (mlflow server, uvicorn) nor of the postmaster's (a daemon of its own)."""
    postmaster = directory / "postgres" / "data" / "postmaster.pid"
    roots = [started.proc.pid]
    if postmaster.exists():
        roots.append(int(postmaster.read_text().split()[0]))
    processes = _tree(*roots)
    assert len(processes) >= 3, "expected ctr server, mlflow server and uvicorn while it runs"
    assert _processes_naming(directory)
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(timeout=90) == 0, started.out.read_text()
    assert "stopped" in started.out.read_text()
    deadline = time.monotonic() + 10  # processes reparented to init may take a moment
    while any(map(_alive, processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in processes if _alive(pid)]
    assert not _processes_naming(directory)


def _log_run(uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment("ctr-server-test")
    run = client.create_run(experiment_id, run_name="through-ctr-server")
    client.log_metric(run.info.run_id, "val_ndcg_at_10", 0.25, step=1)
    client.log_text(run.info.run_id, "kept", "notes/kept.txt")  # through the artifact proxy
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _check_run(uri: str, run_id: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_ndcg_at_10"] == 0.25
    assert [f.path for f in client.list_artifacts(run_id, "notes")] == ["notes/kept.txt"]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A server directory the system user postgres can enter (see the module docstring)."""
    path = Path(tempfile.mkdtemp(prefix="ctr-server-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path / "srv"
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------- sqlite
@pytest.mark.slow
def test_sqlite_server_tracks_stops_cleanly_and_keeps_its_runs(tmp_path):
    directory = tmp_path / "srv"
    with ctr_server(directory) as started:
        run_id = _log_run(started.uri)
        _stop_and_check(started, directory)
    assert (directory / "mlflow.db").is_file()
    # the second start, through the script `make results` uses: it starts a server
    # in CTR_SERVER_DIR, runs the command with MLFLOW_TRACKING_URI set, stops it
    check = (
        "import os; from mlflow import MlflowClient; "
        f"run = MlflowClient().get_run({run_id!r}); "
        "print(run.info.status, run.data.metrics['val_ndcg_at_10']); raise SystemExit(3)"
    )
    proc = subprocess.run(
        [str(ROOT / "scripts" / "with-mlflow-server"), str(VENV_BIN / "python"), "-c", check],
        env=subprocess_env(None, CTR=str(VENV_BIN / "ctr"), CTR_SERVER_DIR=str(directory)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the command's own status
    assert proc.stdout.split() == ["FINISHED", "0.25"]
    assert "tracking into http://127.0.0.1:" in proc.stderr
    assert "stopped" in (directory / "ctr-server.out").read_text()
    assert not _processes_naming(directory)


def test_the_script_uses_a_server_already_named(tmp_path):
    proc = subprocess.run(
        [str(ROOT / "scripts" / "with-mlflow-server"), "sh", "-c", 'echo "$MLFLOW_TRACKING_URI"'],
        env=subprocess_env("http://127.0.0.1:1", CTR_SERVER_DIR=str(tmp_path / "srv")),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "http://127.0.0.1:1"
    assert not (tmp_path / "srv").exists()  # no server started


# ----------------------------------------------------------------- postgres
@pytest.mark.slow
@needs_postgres
def test_postgres_server_tracks_stops_cleanly_and_keeps_its_runs(open_dir):
    directory = open_dir
    data = directory / "postgres" / "data"
    with ctr_server(directory, "--backend", "postgres") as started:
        assert "initdb: a new PostgreSQL cluster" in started.out.read_text()
        run_id = _log_run(started.uri)
        pid_file = (data / "postmaster.pid").read_text()
        _stop_and_check(started, directory)
    assert not (data / "postmaster.pid").exists()
    # what a start killed with the machine leaves: a postmaster.pid whose process is gone
    (data / "postmaster.pid").write_text(pid_file)
    with ctr_server(directory, "--backend", "postgres") as started:
        out = started.out.read_text()
        assert "initdb" not in out and "removing the stale postmaster.pid" in out
        _check_run(started.uri, run_id)
        _stop_and_check(started, directory)


@pytest.mark.slow
@needs_postgres
def test_a_cluster_left_running_by_a_killed_start_is_stopped_and_restarted(open_dir):
    """`ctr server` killed by SIGKILL leaves its PostgreSQL running (pg_ctl detaches
    it); the next start on the directory stops that one and starts its own."""
    from experiments.postgres import LocalPostgres

    lines: list[str] = []
    first = LocalPostgres(open_dir, log=lines.append)
    first.start()
    orphan = first._postmaster_pid()
    second = LocalPostgres(open_dir, log=lines.append)
    try:
        second.start()
        assert second._postmaster_pid() != orphan
        assert f"stopping the PostgreSQL an earlier start left running (pid {orphan})" in lines
    finally:
        second.stop()
    assert not (open_dir / "postgres" / "data" / "postmaster.pid").exists()


# ------------------------------------------------------------ refused starts
def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(
            main, ["server", "--dir", str(tmp_path / "srv"), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is taken" in result.output
    assert "--port" in result.output and "Traceback" not in result.output


def test_one_server_per_directory(tmp_path):
    directory = tmp_path / "srv"
    directory.mkdir()
    with open(directory / ".ctr-server.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running ctr server holds it
        result = CliRunner().invoke(main, ["server", "--dir", str(directory), "--port", "0"])
    assert result.exit_code == 1
    assert f"is serving {directory}" in result.output and "--dir" in result.output


def test_backend_and_backend_store_uri_exclude_each_other(tmp_path):
    result = CliRunner().invoke(
        main,
        ["server", "--backend", "postgres", "--backend-store-uri", "sqlite:///x.db"],
    )
    assert result.exit_code == 2
    assert "not both" in result.output


def test_missing_postgres_binaries_name_the_package(monkeypatch, tmp_path):
    """Where no server binaries are found (here by searching empty directories:
    this machine has them), the error names the package to install."""
    from experiments.postgres import PostgresError, find_server_bindir

    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config, no initdb
    with pytest.raises(PostgresError, match=r"not found .*apt-get install -y postgresql"):
        find_server_bindir(debian_root=tmp_path)
