"""`ctr train --nproc N`: one tracked training as N processes under torchrun.

    ctr train --nproc 2 --model deepfm --override training.num_epochs=2

runs, on this machine and on loopback only,

    python -m torch.distributed.run --nnodes 1 --nproc_per_node 2
        --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0 --rdzv-id <random>
        -m ctr train --model deepfm --override training.num_epochs=2

(the rendezvous store on 127.0.0.1 and a free port; gloo's sockets, and NCCL's
bootstrap, on the loopback interface unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME
say otherwise). Every rank runs `ctr train`; rank 0 alone creates and logs the
MLflow run and prints the summary (ctr.training.distributed says how the work
is shared).

When a rank dies, torchrun stops the others and exits non-zero. Rank 0 marks the
run FAILED itself when it can, naming the rank; when rank 0 is the one that died,
or was stopped before it could, this launcher marks it FAILED. It then raises
DistributedLaunchError naming the rank torchrun reports as the first failure.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from ctr.errors import CTRError
from ctr.utils import get_logger

logger = get_logger("experiments.launch")

# rank 0 writes its MLflow run id to the file this variable names (experiments.train)
RUN_ID_FILE_ENV = "CTR_RUN_ID_FILE"
_REPORT_LINES = 400  # torchrun's closing report is in the last lines of its stderr


class DistributedLaunchError(CTRError):
    """A distributed training job failed; the message names the rank that failed first."""


def torchrun_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """The torchrun command line that runs `ctr train <train_args>` as `nproc` ranks."""
    if nproc < 1:
        raise CTRError(f"expected --nproc of at least 1, got {nproc}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "127.0.0.1:0",  # port 0: torchrun's store takes a free one
        "--rdzv-id",
        uuid.uuid4().hex,
        "-m",
        "ctr",
        "train",
        *train_args,
    ]


def train_arguments(
    config_path: str,
    model: str,
    overrides: Sequence[str],
    experiment_name: str,
    run_name: str | None,
    track: bool,
) -> list[str]:
    """The `ctr train` arguments each rank gets: what the user asked for, less --nproc.

    The overrides arrive merged (--override, --overrides and the shorthands).
    """
    args = ["--config", config_path] if config_path else []
    args += ["--model", model] if model else []
    args += ["--experiment-name", experiment_name]
    args += ["--run-name", run_name] if run_name else []
    args += [] if track else ["--no-track"]
    return args + (["--override", *overrides] if overrides else [])


def record_run_id(run_id: str) -> None:
    """Rank 0: leave the run id where `launch_training` looks for it (if it launched us)."""
    path = os.environ.get(RUN_ID_FILE_ENV)
    if path:
        Path(path).write_text(run_id)


def loopback_env() -> dict[str, str]:
    """GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME set to the loopback interface, where unset
    (gloo would otherwise listen on whatever address the host name resolves to)."""
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    loopback = next((n for n in ("lo", "lo0") if n in names), None)
    if loopback is None:
        return {}
    return {
        key: loopback
        for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
        if not os.environ.get(key)
    }


def root_cause(report: str) -> tuple[int, int] | None:
    """(rank, exit code) of the first failure in torchrun's closing report, or None.

    The report ends with a "Root Cause (first observed failure)" block holding
    `rank : 1 (local_rank: 1)` and `exitcode : -9 (pid: 1234)`.
    """
    _, _, cause = report.rpartition("Root Cause")
    found_rank = re.search(r"^\s*rank\s*:\s*(\d+)", cause, re.MULTILINE)
    found_code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", cause, re.MULTILINE)
    if not cause or found_rank is None or found_code is None:
        return None
    return int(found_rank.group(1)), int(found_code.group(1))


def describe_exit(code: int) -> str:
    """'exit code 3', or 'signal SIGKILL' for a negative code (killed by that signal)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def launch_training(nproc: int, train_args: Sequence[str], *, debug: bool = False) -> None:
    """Run `ctr train <train_args>` as `nproc` ranks under torchrun and wait for it.

    `debug` (ctr --debug) is passed on as CTR_DEBUG=1: the ranks show tracebacks.

    torchrun's output passes through. Raises DistributedLaunchError when the job
    fails (after making sure rank 0's MLflow run, if it started one, ends FAILED);
    Ctrl-C and SIGTERM stop the job (rank 0 ends its run KILLED) and propagate.
    """
    with tempfile.TemporaryDirectory(prefix="ctr-launch-") as scratch:
        run_id_file = Path(scratch) / "run_id"
        env = {**os.environ, **loopback_env(), RUN_ID_FILE_ENV: str(run_id_file)}
        if debug:
            env["CTR_DEBUG"] = "1"
        cmd = torchrun_command(nproc, train_args)
        logger.info("launching %d processes: %s", nproc, " ".join(cmd[1:]))
        proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1
        )
        tail: collections.deque[str] = collections.deque(maxlen=_REPORT_LINES)
        copier = threading.Thread(target=_tee, args=(proc.stderr, tail), daemon=True)
        copier.start()
        previous = _forward_sigterm(proc)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too: it stops the ranks
            proc.wait()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            copier.join(timeout=5)
        if code == 0:
            return
        if _terminated.is_set():  # a stop that was asked for: rank 0 ends its run KILLED
            from experiments.train import TrainingTerminated

            raise TrainingTerminated("received signal SIGTERM")
        run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
    cause = root_cause("".join(tail))
    what = (
        f"rank {cause[0]} failed first ({describe_exit(cause[1])})"
        if cause is not None
        else f"torchrun exited with {describe_exit(code)}"
    )
    message = f"distributed training with {nproc} processes failed: {what}; see its output above"
    error = DistributedLaunchError(message)
    if run_id:
        _end_run_failed(run_id, message)
        error.mlflow_run_id = run_id  # type: ignore[attr-defined]  # for the CLI's message
    raise error


_terminated = threading.Event()


def _forward_sigterm(proc: subprocess.Popen):
    """SIGTERM to this process goes on to torchrun (which stops the ranks); returns
    the previous handler, or None off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _terminated.clear()

    def forward(signum, frame):
        _terminated.set()
        proc.send_signal(signal.SIGTERM)

    return signal.signal(signal.SIGTERM, forward)


def _tee(stream, tail: collections.deque) -> None:
    """Copy torchrun's stderr through, keeping its last lines for the report."""
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)
    stream.close()


def _end_run_failed(run_id: str, message: str) -> None:
    """End rank 0's run FAILED unless it ended so already (or FINISHED: its results
    are complete). Never raises, and retries for 15 s at most: the server may be
    why the job failed."""
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from experiments.tracking_errors import bounded_http_retries
    from experiments.train import ERROR_TAG

    client = MlflowClient()
    try:
        with bounded_http_retries(15.0):
            status = client.get_run(run_id).info.status
            if status in ("FAILED", "FINISHED"):
                return
            tags = [RunTag(ERROR_TAG, message), RunTag("status_reason", "FAILED")]
            client.log_batch(run_id, tags=tags)
            client.set_terminated(run_id, "FAILED")
        logger.info("run %s (was %s) marked FAILED", run_id, status)
    except Exception as exc:
        logger.warning("could not mark run %s FAILED: %s", run_id, exc)
