"""A server that a README command starts, run by a test exactly as written but on a
free port, from the venv, with its output in a log file."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import VENV_BIN, free_port, stop_process, wait_until_answers


@dataclass
class StartedServer:
    url: str  # http://127.0.0.1:PORT
    port: int
    proc: subprocess.Popen


@contextmanager
def readme_server(
    command: str,
    port_option: str,
    health_path: str,
    log: Path,
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float = 120.0,
    group: bool = False,
) -> Iterator[StartedServer]:
    """Start `command` with its `port_option` (e.g. "--port 5000") on a free port; yield
    once `health_path` answers 200; stop it on leaving the block.

    group=True starts it in its own process group and stops the whole group (for
    servers whose workers are child processes, as `mlflow models serve`'s are).
    """
    port = free_port()
    flag = port_option.split()[0]
    argv = shlex.split(command.replace(port_option, f"{flag} {port}"))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(VENV_BIN / argv[0]), *argv[1:]],
            cwd=cwd,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=group,
        )
    server = StartedServer(f"http://127.0.0.1:{port}", port, proc)
    try:
        wait_until_answers(f"{server.url}{health_path}", proc, log, timeout=timeout)
        yield server
    finally:
        stop_process(proc, grace=20.0 if group else 15.0, group=group)
