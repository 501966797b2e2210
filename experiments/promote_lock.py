"""One promotion at a time per registered model, on any tracking store.

    with promotion_lock(client, "deepfm-movielens"):
        ...  # read the alias holder, compare, move `champion` and `previous`

Why: a promotion reads the version that holds `champion`, compares with it,
then points `previous` at it and `champion` at the new version. Two `ctr
promote` of one model at once both read the same holder; the second writer's
`champion` wins, but its `previous` names the holder both read, not the
version the other had just made champion (and its comparison was with a
holder that was no longer current). The registry offers no compare-and-set on
aliases, so promotions of a model are serialised instead.

How: the lock is a registered model of its own, `<name>.promote-lock`.
Creating a registered model is the one atomic test-and-set every MLflow store
gives, through a server or not: the name is unique in the database (SQLite or
PostgreSQL), so of two creations at once one fails with
RESOURCE_ALREADY_EXISTS. The holder deletes it when done, also on errors and
Ctrl-C; the lock model is visible in the registry only while a promotion runs.
A file lock would not do: clients of a server share no file system.

A holder killed outright (SIGKILL, a lost machine) leaves the lock behind.
A waiter takes it over when its owner is a process on this machine that is
gone, or when it is older than STALE_AFTER_S (promotions take seconds); a
lock held by a live process elsewhere makes a waiter give up after `timeout`
with an error that names the lock and how to remove it. (Two waiters that
judge the same abandoned lock stale at once could, in a window of one
request, both proceed; only after such a crash.)
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ctr.errors import CTRError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

logger = logging.getLogger("experiments.promote_lock")

LOCK_SUFFIX = ".promote-lock"
TIMEOUT_S = 120.0  # a promotion takes seconds; minutes means the holder is stuck or gone
STALE_AFTER_S = 600.0  # a lock this old is left by a holder that died
_POLL_S = 0.2
_OWNER, _HOST, _PID = "ctr.lock.owner", "ctr.lock.host", "ctr.lock.pid"
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


class PromotionLockError(CTRError, TimeoutError):
    """Another promotion of the same registered model held its lock for too long."""


def lock_name(model_name: str) -> str:
    """The registered model that locks promotions of `model_name`."""
    return f"{model_name}{LOCK_SUFFIX}"


def _read(client: MlflowClient, name: str) -> RegisteredModel | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            return None
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _age_s(lock: RegisteredModel) -> float:
    return max(0.0, time.time() - (lock.creation_timestamp or 0) / 1000.0)


def _stale(lock: RegisteredModel, stale_after: float) -> bool:
    """The lock's holder is gone: a process of this machine that no longer runs, or
    a lock older than `stale_after` seconds."""
    tags = lock.tags or {}
    if tags.get(_HOST) == socket.gethostname() and tags.get(_PID, "").isdigit():
        if not _pid_alive(int(tags[_PID])):
            return True
    return _age_s(lock) > stale_after


def _delete_if_owned(client: MlflowClient, name: str, owner: str) -> bool:
    """Delete the lock `name` if `owner` holds it; whether it was deleted."""
    from mlflow.exceptions import MlflowException

    lock = _read(client, name)
    if lock is None or (lock.tags or {}).get(_OWNER) != owner:
        return False
    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in _MISSING:
            return False
        raise
    return True


def _describe(lock: RegisteredModel | None) -> str:
    if lock is None:
        return "a lock that is gone now"
    tags = lock.tags or {}
    return f"host {tags.get(_HOST, '?')}, pid {tags.get(_PID, '?')}, held for {_age_s(lock):.0f}s"


@contextmanager
def promotion_lock(
    client: MlflowClient,
    model_name: str,
    timeout: float = TIMEOUT_S,
    stale_after: float = STALE_AFTER_S,
) -> Iterator[None]:
    """Hold the promotion lock of `model_name` for the block (see the module docstring).

    Raises PromotionLockError when another promotion of `model_name` holds the lock
    for more than `timeout` seconds.
    """
    from mlflow.exceptions import MlflowException

    name = lock_name(model_name)
    owner = uuid.uuid4().hex
    tags = {_OWNER: owner, _HOST: socket.gethostname(), _PID: str(os.getpid())}
    description = (
        f"held by `ctr promote` while it moves the aliases of {model_name}; "
        f"delete it if no promotion is running"
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(name, tags=tags, description=description)
            break
        except MlflowException as exc:
            if exc.error_code not in _EXISTS:
                raise
        held = _read(client, name)
        if held is not None and _stale(held, stale_after):
            stale_owner = (held.tags or {}).get(_OWNER, "")
            if _delete_if_owned(client, name, stale_owner):
                logger.warning("took over the promotion lock %s (%s)", name, _describe(held))
            continue
        if held is not None and time.monotonic() > deadline:
            raise PromotionLockError(
                f"another promotion of {model_name} holds the lock {name!r} "
                f"({_describe(held)}); wait for it to finish, or, if none is running, "
                f"delete the registered model {name!r} (MLflow UI, or "
                f"MlflowClient().delete_registered_model({name!r})) and promote again"
            )
        if held is not None:
            time.sleep(_POLL_S * random.uniform(0.5, 1.5))  # jitter: waiters spread out
    try:
        yield
    finally:
        try:
            if not _delete_if_owned(client, name, owner):
                logger.warning("the promotion lock %s was taken over while it was held", name)
        except Exception as exc:  # never hide the promotion's own error behind this one
            logger.warning("could not release the promotion lock %s: %s", name, exc)
