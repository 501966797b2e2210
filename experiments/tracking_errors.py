"""A tracked run and its tracking server: checked at the start, bounded retries
while it trains, a clear error and the command to resume when it fails.

    check_tracking_server()                    # fails in seconds when nobody answers
    with bounded_http_retries(tracking_timeout()):
        ...                                    # the run's requests give up within the limit

MLflow's client retries a request that cannot connect, times out or gets a 5xx
answer (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default), sleeping
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR * 2**(n - 1) s (+ up to
MLFLOW_HTTP_REQUEST_BACKOFF_JITTER s) before retry n (none before the first), and
waits up to MLFLOW_HTTP_REQUEST_TIMEOUT s (120) for each attempt: about 4 minutes
per request against a server that is gone, and up to 16 against one that hangs.
A run whose server has died would spend that on every request it makes while
failing. So a run is given CTR_TRACKING_TIMEOUT seconds (default 120) for each
request: `plan_retries` picks the retries and the per-attempt timeout that fit
in it, spending about 60 % on the pauses between retries (a server restarted
within about a minute loses nothing by default) and keeping the MLflow variables
the user set.

When tracking fails mid-run (`is_tracking_error`), what the failure leaves is
recorded with one quick attempt each and no retries, and only when the server
still answers (`recording_after`); the run then ends with TrackingFailedError,
whose message says what failed and how to continue into the same run
(`resume_command`): `MLFLOW_RUN_ID=<run> ctr train ... training.resume_from=<dir>/last.pt`
continues from the last checkpoint exactly as the run would have (the trainer
reseeds every epoch from (seed, epoch)).
"""

from __future__ import annotations

import os
import re
import shlex
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.errors import CTRError
from ctr.utils import get_logger

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ctr.config import ExperimentConfig

logger = get_logger("experiments.tracking_errors")

TIMEOUT_ENV = "CTR_TRACKING_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
JITTER_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
REQUEST_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
RESUMED_FROM_TAG = "ctr.resumed_from"  # the checkpoint a run continued from
RESUMED_FROM_RUN_TAG = "ctr.resumed_from_run"  # the run that wrote that checkpoint
PREVIOUS_ERROR_TAG = "ctr.previous_error"  # the error of an attempt the run was resumed after
ERROR_TAG = "error"
_MLFLOW_DEFAULTS = {BACKOFF_ENV: 2, JITTER_ENV: 1.0, REQUEST_TIMEOUT_ENV: 120}
_MAX_RETRIES = 10  # MLflow refuses more
_BACKOFF_MAX_S = 120.0  # urllib3's cap on one pause
_PAUSE_SHARE = 0.6  # of the limit, for the pauses between retries
_SERVER_CHECK_TIMEOUT_S = 5
_PROBE_TIMEOUT_S = 2.0  # does the server still answer, after a failure
_RECORD_TIMEOUT_S = 5  # each request that records a failure: one attempt, this long


class TrackingServerError(CTRError, RuntimeError):
    """The MLflow tracking server cannot be reached."""


class TrackingFailedError(CTRError, RuntimeError):
    """Tracking failed during a run (the server went away, or could not store what
    the run sent); the message says what, where the checkpoints are, and how to resume."""


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextmanager
def env_vars(**values: str) -> Iterator[None]:
    """Set environment variables for the block, restoring the old values after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def check_tracking_server(uri: str | None = None, timeout: int = _SERVER_CHECK_TIMEOUT_S) -> str:
    """Return the tracking URI; raise TrackingServerError at once if it is a
    server that does not answer (instead of MLflow's minutes of retries)."""
    import mlflow
    from mlflow import MlflowClient

    uri = uri or mlflow.get_tracking_uri()
    if not is_server_uri(uri):
        return uri
    with env_vars(**{RETRIES_ENV: "0", REQUEST_TIMEOUT_ENV: str(timeout)}):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise TrackingServerError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}). Start it "
                f"(e.g. `mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri "
                f"sqlite:///mlflow.db`) or unset MLFLOW_TRACKING_URI to track into "
                f"./mlflow.db in the working directory"
            ) from None
    return uri


# ------------------------------------------------------------ bounded retries
def tracking_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds a run's request may take, retries included: CTR_TRACKING_TIMEOUT or 120."""
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CTRError(
            f"expected {TIMEOUT_ENV} to be a number of seconds > 0, got {raw!r}; "
            f"e.g. {TIMEOUT_ENV}=120 (the default)"
        )
    return value


@dataclass(frozen=True)
class RetryPlan:
    """MLflow's HTTP retry settings for one request, and what they cost at most."""

    max_retries: int
    backoff_factor: int
    backoff_jitter: float
    request_timeout: int  # per attempt

    def pause_seconds(self) -> float:
        """The longest total pause between the attempts (urllib3's backoff)."""
        return sum(
            min(_BACKOFF_MAX_S, self.backoff_factor * 2 ** (n - 1) + self.backoff_jitter)
            for n in range(2, self.max_retries + 1)
        )

    def worst_case_seconds(self) -> float:
        """Every attempt timing out, every pause at its longest."""
        return (self.max_retries + 1) * self.request_timeout + self.pause_seconds()

    def env(self) -> dict[str, str]:
        return {
            RETRIES_ENV: str(self.max_retries),
            BACKOFF_ENV: str(self.backoff_factor),
            JITTER_ENV: str(self.backoff_jitter),
            REQUEST_TIMEOUT_ENV: str(self.request_timeout),
        }


def _user_value(environ: Mapping[str, str], key: str, kind: type) -> Any:
    raw = environ.get(key, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        return None  # MLflow itself will name the bad value


def plan_retries(timeout: float, environ: Mapping[str, str] = os.environ) -> RetryPlan:
    """The retry settings whose worst case fits in `timeout` seconds.

    A value the user set in `environ` is kept. Left to choose, it takes MLflow's
    backoff (factor 2, jitter 1 s), as many retries as fit in 60 % of the limit,
    and splits the rest among the attempts (at most MLflow's 120 s each, at least
    1 s): 120 s gives 5 retries (pauses of 0, 4, 8, 16 and 32 s, plus jitter) of
    up to 8 s each. A few seconds are kept back for recording the failure.
    """
    budget = timeout - min(5.0, 0.1 * timeout)
    factor = _user_value(environ, BACKOFF_ENV, int)
    jitter = _user_value(environ, JITTER_ENV, float)
    retries = _user_value(environ, RETRIES_ENV, int)
    per_attempt = _user_value(environ, REQUEST_TIMEOUT_ENV, int)
    factor = _MLFLOW_DEFAULTS[BACKOFF_ENV] if factor is None else factor
    jitter = _MLFLOW_DEFAULTS[JITTER_ENV] if jitter is None else jitter

    def plan(n: int, t: int) -> RetryPlan:
        return RetryPlan(n, factor, jitter, t)

    if retries is None:
        fits = (
            (
                lambda n: (
                    plan(n, 1).pause_seconds() <= _PAUSE_SHARE * budget
                    and plan(n, 1).worst_case_seconds() <= budget
                )
            )
            if per_attempt is None
            else (lambda n: plan(n, per_attempt).worst_case_seconds() <= budget)
        )
        retries = max((n for n in range(_MAX_RETRIES + 1) if fits(n)), default=0)
    if per_attempt is None:
        spare = (budget - plan(retries, 0).pause_seconds()) / (retries + 1)
        per_attempt = int(min(_MLFLOW_DEFAULTS[REQUEST_TIMEOUT_ENV], max(1, spare)))
    return plan(retries, per_attempt)


@contextmanager
def bounded_http_retries(timeout: float) -> Iterator[RetryPlan]:
    """MLflow's HTTP retries bounded by `timeout` s per request within the block
    (the variables the user set are kept; see `plan_retries`)."""
    plan = plan_retries(timeout)
    if plan.worst_case_seconds() > timeout:
        logger.warning(
            "with the MLFLOW_HTTP_REQUEST_* values set here, a request to the tracking server "
            "may retry for up to %.0f s, beyond %s=%g",
            plan.worst_case_seconds(),
            TIMEOUT_ENV,
            timeout,
        )
    unset = {k: v for k, v in plan.env().items() if not os.environ.get(k, "").strip()}
    with env_vars(**unset):
        yield plan


# ------------------------------------------------------------ after a failure
def is_tracking_error(exc: BaseException) -> bool:
    """Did a request to the tracking server (or its artifact store) fail?"""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException | requests.RequestException)


def server_answers(uri: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Does the server at `uri` answer GET /health now?"""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


@contextmanager
def recording_after(exc: BaseException, uri: str) -> Iterator[bool]:
    """Around the requests that record a failure; yields whether to make them.

    After a tracking error they are made only if the server still answers, each
    with at most a few seconds and one immediate retry (the retries were spent
    already; the one left covers a kept-alive connection the server has closed).
    The answer is kept on the exception, so the server is asked once per failure.
    """
    if not (is_server_uri(uri) and is_tracking_error(exc)):
        yield True
        return
    reachable = getattr(exc, "ctr_server_answers", None)
    if reachable is None:
        reachable = server_answers(uri)
        exc.ctr_server_answers = reachable  # type: ignore[attr-defined]
    timeout = _RECORD_TIMEOUT_S if reachable else 1
    with env_vars(**{RETRIES_ENV: "1", REQUEST_TIMEOUT_ENV: str(timeout)}):
        yield reachable


def describe_failure(exc: BaseException) -> str:
    """What failed, in a few words (MLflow's message names the URL and the retries)."""
    text = " ".join(str(exc).split())
    what = "storing an artifact" if "mlflow-artifacts" in text else "a request"
    status = re.search(r"too many (\d{3}) error responses", text)
    if status:
        return (
            f"{what}: the server answered HTTP {status.group(1)} to every retry "
            "(the server's log says why)"
        )
    if "Connection refused" in text or "NewConnectionError" in text:
        return f"{what}: connection refused (the server is down)"
    if "timed out" in text.lower():
        return f"{what}: no answer in time"
    return f"{what}: {text[:300]}"


def resume_command(
    run_id: str,
    checkpoint_dir: Path,
    config_path: str | Path | None,
    model: str | None,
    overrides: Sequence[str],
) -> str:
    """The command that continues `run_id` from its last checkpoint, in the same run.

    Without a last.pt (the run failed before its first epoch ended) it starts the
    run's training again, still into the same run.
    """
    kept = [o for o in overrides if o.split("=", 1)[0].strip() != "training.resume_from"]
    last = checkpoint_dir.resolve() / "last.pt"
    if last.is_file():
        kept.append(f"training.resume_from={last}")
    words = ["ctr", "train"]
    words += ["--config", str(config_path)] if config_path else ["--model", str(model)]
    if kept:
        words += ["--override", *kept]
    return f"MLFLOW_RUN_ID={run_id} " + " ".join(shlex.quote(w) for w in words)


def tracking_failed(
    exc: BaseException,
    uri: str,
    run_id: str,
    *,
    marked_failed: bool,
    checkpoint_dir: Path,
    resume: str,
    timeout: float,
) -> TrackingFailedError:
    """The error a run ends with when tracking failed: one line, then the resume command."""
    marked = "is marked FAILED" if marked_failed else "could not be marked FAILED (shows RUNNING)"
    retried = f"retried for up to {timeout:g} s, {TIMEOUT_ENV}"
    return TrackingFailedError(
        f"tracking run {run_id} at {uri} failed while {describe_failure(exc)} ({retried}); "
        f"the run {marked}; its checkpoints are in {checkpoint_dir}\n"
        f"to continue it into the same run once the server works:\n  {resume}"
    )


# ------------------------------------------------------------- a resumed run
def restored_history(config: ExperimentConfig) -> list[dict[str, float]]:
    """The epochs before training.resume_from's checkpoint (for the curves), or []."""
    from ctr.utils import load_checkpoint

    path = config.training.resume_from
    if not path or not Path(path).is_file():
        return []
    return list(load_checkpoint(path, "cpu").get("history", []))


def mark_resumed(client: MlflowClient, run_id: str, config: ExperimentConfig) -> None:
    """Tag a run that continues from a checkpoint: which one, and which other run
    wrote it (a tracked run's checkpoint directory is named after the run). A run
    resumed into itself after a failure keeps that failure's error under
    ctr.previous_error; its error and status_reason tags are removed."""
    from mlflow.entities import RunTag

    path = config.training.resume_from
    if not path:
        return
    tags = [RunTag(RESUMED_FROM_TAG, str(Path(path).resolve()))]
    source_run = Path(path).resolve().parent.name
    if re.fullmatch(r"[0-9a-f]{32}", source_run) and source_run != run_id:
        tags.append(RunTag(RESUMED_FROM_RUN_TAG, source_run))
    existing = client.get_run(run_id).data.tags
    if ERROR_TAG in existing:
        tags.append(RunTag(PREVIOUS_ERROR_TAG, existing[ERROR_TAG]))
    client.log_batch(run_id, tags=tags)
    for stale in (ERROR_TAG, "status_reason"):
        if stale in existing:
            client.delete_tag(run_id, stale)
