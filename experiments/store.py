"""The embedded SQLite tracking store, safe for several processes starting at once.

    uri = prepare_tracking_store()  # before the first run touches the store
    experiment = retry_when_locked(mlflow.set_experiment, "movielens-100k")

MLflow creates and migrates a SQLite store the first time a process opens it,
with no lock between processes: six `ctr train` started together on a fresh
`./mlflow.db` run the same migrations at once and most of them die
(`duplicate column name: step`, `table experiments already exists`).
`prepare_tracking_store` opens the store once under an exclusive file lock
beside the database (`mlflow.db.lock`), so one process creates the tables and
the others find them. MLflow keeps the opened store for the process, so later
calls reuse it.

SQLite allows one writer at a time. MLflow's sessions wait up to 20 s for the
write lock (`PRAGMA busy_timeout`), but a wait can still end in `database is
locked`; `retry_when_locked` retries such a call a few times with growing
pauses.

Creating the experiment by name is already race-safe in MLflow 3:
`mlflow.set_experiment` catches the loser's RESOURCE_ALREADY_EXISTS and reads
the winner's experiment back (which it returns without making it active, so
pass its id on to `start_run`).

Only SQLite URIs are touched; http(s) servers and PostgreSQL serve concurrent
clients themselves.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ctr.errors import CTRError

try:
    import fcntl
except ImportError:  # Windows: no flock; MLflow's own behaviour applies
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("experiments.store")

T = TypeVar("T")

LOCK_SUFFIX = ".lock"
_LOCK_TIMEOUT_S = 300.0  # creating the tables takes seconds; minutes means something is stuck
_LOCK_POLL_S = 0.1
_LOCKED = "database is locked"
_RETRIES = 8  # pauses 0.1, 0.2, ... 5 s (with jitter): about 12 s beyond MLflow's own waits
_MAX_PAUSE_S = 5.0
# MLflow logs every failed SQL session with its traceback here before raising
_MLFLOW_DB_LOGGER = "mlflow.store.db.utils"


class TrackingStoreLockError(CTRError, TimeoutError):
    """Another process held the SQLite store's lock for too long."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI; None for any other URI or an
    in-memory database.

    >>> sqlite_path("sqlite:////home/me/mlflow.db")
    PosixPath('/home/me/mlflow.db')
    >>> sqlite_path("http://127.0.0.1:5000") is None
    True
    """
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute()


@contextmanager
def file_lock(path: Path, timeout: float = _LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block.

    The lock ends with the process, so a crashed holder leaves no stale lock;
    the file itself stays (removing it would race with a waiting process).
    """
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
    try:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout:
                    raise TrackingStoreLockError(
                        f"another process has held {path} for over {timeout:.0f} s while "
                        f"opening the tracking store beside it; wait for it to finish or stop "
                        f"it (`fuser {path}` names it)"
                    ) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_tracking_store(uri: str | None = None) -> str:
    """Open the tracking store at `uri` (default: MLflow's tracking URI) so that
    concurrent processes can use it; return the URI.

    For a SQLite store this creates (or migrates) its tables while holding
    `<db>.lock`, one process at a time, before any run is written. Any other
    URI is returned untouched.
    """
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    db = sqlite_path(uri)
    if db is None:
        return uri
    # MLflow's own store constructor (cached per URI for the process): the store
    # that later calls use is the one built here, and building it runs the
    # migrations. A private helper, but the one place that picks the store class
    # and its artifact root exactly as MLflow does.
    from mlflow.tracking._tracking_service.utils import _get_store

    with file_lock(db.with_name(db.name + LOCK_SUFFIX)):
        retry_when_locked(_get_store, uri)
    return uri


def _is_locked_error(exc: BaseException) -> bool:
    return _LOCKED in str(exc)


class _DropLockedErrors(logging.Filter):
    """Drops MLflow's logged traceback of a `database is locked` failure that
    is about to be retried (the error itself still propagates if retries run out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and _is_locked_error(exc))


def retry_when_locked(fn: Callable[..., T], *args, retries: int = _RETRIES, **kwargs) -> T:
    """`fn(*args, **kwargs)`, called again after a pause when SQLite answered
    `database is locked` (at most `retries` more times, pauses doubling from
    0.1 s to 5 s, with jitter so waiting processes do not collide again).

    For calls that are safe to repeat because a locked call wrote nothing
    (MLflow rolls the session back). Any other error is raised at once.
    """
    db_logger = logging.getLogger(_MLFLOW_DB_LOGGER)
    log_filter = _DropLockedErrors()
    db_logger.addFilter(log_filter)
    try:
        for attempt in range(retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == retries or not _is_locked_error(exc):
                    raise
                pause = min(_MAX_PAUSE_S, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)
                logger.info("tracking store busy (%s); retrying in %.1f s", _LOCKED, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")
    finally:
        db_logger.removeFilter(log_filter)
