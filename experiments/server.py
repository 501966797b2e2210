"""`ctr server`: an MLflow tracking server for the project, with the store it writes to.

    ctr server                                        # SQLite file ./mlflow-server/mlflow.db
    ctr server --backend postgres --dir /var/tmp/ctr-mlflow
    ctr server --backend-store-uri postgresql+psycopg://user:pw@dbhost/mlflow

    serve(ServerOptions(backend="postgres", directory=Path("srv")), log=print)  # blocks

Everything lives under one directory (--dir): the SQLite file or the PostgreSQL
cluster (experiments/postgres.py), the artifacts (served through the server,
so clients on other machines can log them), and the server's log. A second
start on the same directory reuses its runs; a lock file keeps two servers off
one directory at once.

Once GET /health answers, it prints the `export MLFLOW_TRACKING_URI=...` line
(alone on its line, so scripts can pick it up) and the UI address. Ctrl-C,
SIGTERM or SIGHUP stops the MLflow server (its whole process group: the
`mlflow server` command and the uvicorn process it runs) and then the
PostgreSQL it started (`pg_ctl stop -m fast`), and the command exits 0. If the
server dies on its own, the command exits 1 with the end of its log.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from ctr.errors import CTRError

BACKENDS = ("sqlite", "postgres")
DEFAULT_DIR = "mlflow-server"
EXPORT_PREFIX = "export MLFLOW_TRACKING_URI="
_START_TIMEOUT_S = 300.0  # MLflow needs ~13 s idle; a first PostgreSQL start migrates its schema
_STOP_GRACE_S = 20.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ServerError(CTRError, RuntimeError):
    """`ctr server` cannot start or keep running: a taken port, a directory in use,
    a server that exited; the message names the cause and the fix."""


class ServerStopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: stop the servers and exit cleanly."""


@dataclass
class ServerOptions:
    """What `ctr server` takes; see `ctr server --help`."""

    backend: str = "sqlite"  # one of BACKENDS; ignored when backend_store_uri is given
    directory: Path = Path(DEFAULT_DIR)
    backend_store_uri: str | None = None  # an existing database instead of one in `directory`
    artifacts_destination: str | None = None  # default: directory/artifacts
    host: str = "127.0.0.1"
    port: int = 5000  # 0: any free port
    workers: int = 1


# ----------------------------------------------------------------- checks
def _bind_port(host: str, port: int) -> int:
    """The port to serve on (a free one for 0), after checking it can be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # uvicorn binds with SO_REUSEADDR too: a port in TIME_WAIT is no obstacle
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"port {port} on {host} is taken: another server listens there; stop it, "
                    "or pick another --port (--port 0 takes any free one)"
                ) from None
            raise ServerError(
                f"cannot listen on {host}:{port} ({exc.strerror}); --host must be an address "
                "of this machine (127.0.0.1, the default, or 0.0.0.0 for every interface)"
            ) from None
        return sock.getsockname()[1]


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Hold DIR/.ctr-server.lock while serving: one server per directory."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".ctr-server.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise ServerError(
                f"another ctr server (pid {holder}) is serving {directory}; stop it first, "
                "point MLFLOW_TRACKING_URI at it, or pick another --dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def _psycopg_driver(uri: str, log: Callable[[str], None]) -> str:
    """postgresql:// means psycopg2 to SQLAlchemy; the project installs psycopg 3."""
    import importlib.util

    if uri.startswith(("postgresql://", "postgres://")) and not importlib.util.find_spec(
        "psycopg2"
    ):
        uri = "postgresql+psycopg://" + uri.split("://", 1)[1]
        log("using the psycopg (v3) driver: postgresql+psycopg://...")
    return uri


def _hide_password(uri: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (a file: store): nothing to hide
        return uri


# -------------------------------------------------------------- processes
@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn the first Ctrl-C/SIGTERM/SIGHUP into ServerStopped; ignore later ones
    so that the clean-up they started is not itself cut short."""

    def handler(signum: int, _frame: object) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise ServerStopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _die_with_parent() -> None:
    """In the child: SIGTERM it when `ctr server` dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process_group(proc: subprocess.Popen, grace: float = _STOP_GRACE_S) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session=True),
    SIGKILL it after `grace` seconds, then SIGKILL whatever of the group is left."""

    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=10)
    send(signal.SIGKILL)  # anything of the group still there (there should be nothing)


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _wait_until_ready(url: str, proc: subprocess.Popen, logfile: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < _START_TIMEOUT_S:
        if proc.poll() is not None:
            raise ServerError(
                f"the MLflow server exited with code {proc.returncode} before answering; "
                f"{logfile} ends with:\n{_log_tail(logfile)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(
        f"the MLflow server did not answer {url}/health within {_START_TIMEOUT_S:.0f} s; "
        f"{logfile} ends with:\n{_log_tail(logfile)}"
    )


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def mlflow_command(store_uri: str, artifacts: str, host: str, port: int, workers: int) -> list[str]:
    """The `mlflow server` command line. The store URI travels in the environment
    (MLFLOW_BACKEND_STORE_URI), where its password stays out of `ps`."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def _start_mlflow(
    options: ServerOptions, store_uri: str, artifacts: str, port: int, log_fh: IO[bytes]
) -> subprocess.Popen:
    env = dict(os.environ)
    env["MLFLOW_BACKEND_STORE_URI"] = store_uri
    # no job runner (huey): starts in about half the time, and the project runs no MLflow jobs
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return subprocess.Popen(
        mlflow_command(store_uri, artifacts, options.host, port, options.workers),
        stdin=subprocess.DEVNULL,
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        env=env,  # and the caller's working directory: a relative sqlite:/// URI means theirs
        start_new_session=True,  # its own process group: stopped as one, away from terminal ^C
        preexec_fn=_die_with_parent,
    )


# ------------------------------------------------------------------ serve
def serve(options: ServerOptions, log: Callable[[str], None] = print) -> None:
    """Start the store and the MLflow server, print the URI, serve until a stop signal.

    Returns after a clean stop (Ctrl-C, SIGTERM, SIGHUP). Raises ServerError (or
    PostgresError) when something cannot start or the server exits on its own;
    whatever was started is stopped either way.
    """
    if options.backend not in BACKENDS:
        raise ServerError(f"expected a backend in {BACKENDS}, got {options.backend!r}")
    directory = Path(options.directory).resolve()
    options = replace(options, directory=directory)
    try:
        with _stop_on_signals(), ExitStack() as stack:
            port = _bind_port(options.host, options.port)
            stack.enter_context(_directory_lock(directory))
            if options.backend_store_uri:
                store_uri = _psycopg_driver(options.backend_store_uri, log)
            elif options.backend == "postgres":
                from experiments.postgres import LocalPostgres

                cluster = LocalPostgres(directory, log=log)
                stack.callback(_announce_stop, log, "PostgreSQL", cluster.stop)
                store_uri = cluster.start()
            else:
                store_uri = f"sqlite:///{directory / 'mlflow.db'}"
            artifacts = options.artifacts_destination or str(directory / "artifacts")
            _serve_mlflow(options, store_uri, artifacts, port, stack, log)
    except ServerStopped:
        log("stopped")


def _announce_stop(log: Callable[[str], None], what: str, stop: Callable[[], None]) -> None:
    log(f"stopping {what} ...")
    stop()


def _serve_mlflow(
    options: ServerOptions,
    store_uri: str,
    artifacts: str,
    port: int,
    stack: ExitStack,
    log: Callable[[str], None],
) -> None:
    logfile = options.directory / "mlflow-server.log"
    log(f"store: {_hide_password(store_uri)}")
    log(f"artifacts: {artifacts}")
    log(f"starting the MLflow server on {options.host}:{port} (log: {logfile})")
    log_fh = stack.enter_context(open(logfile, "ab"))
    log_fh.write(f"\n--- ctr server: mlflow server on {options.host}:{port}\n".encode())
    log_fh.flush()
    proc = _start_mlflow(options, store_uri, artifacts, port, log_fh)
    stack.callback(_announce_stop, log, "the MLflow server", lambda: stop_process_group(proc))
    url = f"http://{_client_host(options.host)}:{port}"
    _wait_until_ready(url, proc, logfile)
    log(f"MLflow tracking server ready (pid {proc.pid}); track into it with:")
    log(f"{EXPORT_PREFIX}{url}")
    log(f"UI: {url}")
    if options.host in ("0.0.0.0", "::"):
        # MLflow answers only Host headers of localhost and private addresses by default
        log(
            f"other machines: http://<a private IP address of this machine>:{port}; by name once "
            f"ctr server runs with MLFLOW_SERVER_ALLOWED_HOSTS=<name>:{port},127.0.0.1:*,localhost:*"
        )
    log("Ctrl-C or SIGTERM stops it")
    proc.wait()
    raise ServerError(
        f"the MLflow server exited with code {proc.returncode}; "
        f"{logfile} ends with:\n{_log_tail(logfile)}"
    )
