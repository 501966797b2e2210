"""experiments.promote_lock on a real SQLite store: one holder at a time, a lock left
by a dead process taken over, a live holder waited for and then named."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from experiments.promote_lock import PromotionLockError, lock_name, promotion_lock


@pytest.fixture
def client(tmp_path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _leave_lock(client, model: str, pid: int) -> None:
    """The lock as a holder with process `pid` on this machine leaves it."""
    client.create_registered_model(
        lock_name(model),
        tags={
            "ctr.lock.owner": "x",
            "ctr.lock.host": socket.gethostname(),
            "ctr.lock.pid": str(pid),
        },
    )


def test_holders_take_turns_and_the_lock_is_gone_after(client):
    inside, overlaps = [], []

    def hold() -> None:
        with promotion_lock(client, "m-movielens"):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.3)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert overlaps == [1, 1, 1]
    assert client.search_registered_models(f"name = '{lock_name('m-movielens')}'") == []


def test_a_lock_left_by_a_dead_process_is_taken_over(client):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    _leave_lock(client, "m-movielens", dead.pid)
    t0 = time.monotonic()
    with promotion_lock(client, "m-movielens", timeout=30):
        holder = client.get_registered_model(lock_name("m-movielens"))
        assert holder.tags["ctr.lock.pid"] == str(os.getpid())
    assert time.monotonic() - t0 < 10


def test_a_live_holder_is_waited_for_then_named(client):
    _leave_lock(client, "m-movielens", os.getpid())  # alive: this process
    with pytest.raises(PromotionLockError) as info:
        with promotion_lock(client, "m-movielens", timeout=0.5):
            pytest.fail("the lock was held by another")
    message = str(info.value)
    assert "m-movielens.promote-lock" in message and f"pid {os.getpid()}" in message
    assert "delete_registered_model" in message
    # a lock older than stale_after is taken over whoever holds it
    with promotion_lock(client, "m-movielens", timeout=5, stale_after=0.0):
        pass
