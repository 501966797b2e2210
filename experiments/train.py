"""The tracked training entry point (`ctr train`, the MLproject's `main`).

    run_id = run_training("configs/deepfm_movielens.yaml", ["training.num_epochs=2"])

One call = one MLflow run:

- the config is loaded and validated first, so a bad config creates no run
  (when `mlflow run` already created one, it is marked FAILED with the error);
- an unreachable tracking server fails in seconds, naming the URI and the fix,
  before any data is read;
- a server that fails mid-run is retried for up to CTR_TRACKING_TIMEOUT seconds
  per request (default 120; experiments/tracking_errors.py): one back by then
  loses nothing, else the run ends with a TrackingFailedError that gives the
  command continuing it, into the same run, from its last checkpoint
  (`MLFLOW_RUN_ID=<run> ctr train ... training.resume_from=<dir>/last.pt`);
- the run ends FINISHED, FAILED (error text in the tag `error`, traceback in
  `errors/traceback.txt`) or KILLED (Ctrl-C or SIGTERM);
- started by `mlflow run`, it attaches to the run MLflow created (MLFLOW_RUN_ID);
  so does a run resumed into itself (tagged ctr.resumed_from, the checkpoint).

`ctr train` then prints `run_summary(run_id)`: the best epoch's validation and
test metrics, where the run is, and the commands to open, compare and promote
it. `train_untracked` (`ctr train --no-track`) trains without MLflow and
returns the same table with the checkpoint path.
"""

from __future__ import annotations

import os
import shlex
import signal
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.config import ConfigError, ExperimentConfig, load_config
from ctr.errors import CTRError
from ctr.utils import get_logger
from experiments.store import prepare_tracking_store, retry_when_locked
from experiments.tracking import ExtraModelLogger, MLflowCallback
from experiments.tracking_errors import (  # noqa: F401  (TrackingServerError: part of this API)
    TrackingServerError,
    bounded_http_retries,
    check_tracking_server,
    env_vars,
    is_server_uri,
    is_tracking_error,
    mark_resumed,
    recording_after,
    resume_command,
    tracking_failed,
    tracking_timeout,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = get_logger("experiments.train")

DEFAULT_EXPERIMENT = "movielens-100k"
ERROR_TAG = "error"
TRACEBACK_ARTIFACT = "errors/traceback.txt"
_MAX_TAG_CHARS = 5000  # MLflow allows 8000 per tag value


class TrainingTerminated(KeyboardInterrupt):
    """SIGTERM arrived during training; handled like Ctrl-C (the run ends KILLED)."""


def default_config_path(model: str) -> Path:
    """configs/<model>_movielens.yaml: in the working directory, else in the checkout."""
    relative = Path("configs") / f"{model}_movielens.yaml"
    if relative.is_file():
        return relative
    in_checkout = Path(__file__).resolve().parents[1] / relative
    return in_checkout if in_checkout.is_file() else relative


def default_extra_model_loggers() -> list[ExtraModelLogger]:
    """Models logged beside the PyTorch model at the end of every tracked run:
    the serving pyfunc `recommender` (experiments.serving)."""
    from experiments.serving import log_recommender

    return [log_recommender]


@contextmanager
def _no_artifact_progress_bars() -> Iterator[None]:
    """No 'Downloading artifacts' bars while the run logs its models: MLflow reads
    back the model it has just logged (to check the input example), which would
    draw a bar per model. A value the user set for the variable wins."""
    if "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" in os.environ:
        yield
        return
    with env_vars(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        yield


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises TrainingTerminated (a KeyboardInterrupt)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise TrainingTerminated(f"received signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _mark_failed(client, run_id: str, exc: BaseException, status: str) -> None:
    """Tag and annotate a run that did not finish; never raises."""
    from mlflow.entities import RunTag

    text = f"{type(exc).__name__}: {exc}"
    try:
        client.log_batch(
            run_id,
            tags=[RunTag(ERROR_TAG, text[:_MAX_TAG_CHARS]), RunTag("status_reason", status)],
        )
        client.log_text(
            run_id,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            TRACEBACK_ARTIFACT,
        )
    except Exception as log_exc:  # the server may be the reason we failed
        logger.warning("could not record the failure on run %s: %s", run_id, log_exc)


def load_training_config(
    config_path: str | Path | None, overrides: Sequence[str] = (), model: str | None = None
) -> ExperimentConfig:
    """The config of a training run: the file (default: the model's config) plus overrides.

    `model` picks configs/<model>_movielens.yaml when no path is given; with both,
    the config's model_name must be `model`.
    """
    if config_path in (None, ""):
        if not model:
            raise ConfigError("expected a config path or a model name, got neither")
        config_path = default_config_path(model)
    config = load_config(config_path, list(overrides))
    if model and config.model_name != model:
        raise ConfigError(
            f"expected the config {config_path} to train model {model!r}, got model_name "
            f"{config.model_name!r}; pass the matching model (e.g. -P model={config.model_name})"
        )
    return config


def run_training(
    config_path: str | Path | None,
    overrides: Sequence[str] = (),
    experiment_name: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    *,
    model: str | None = None,
    extra_model_loggers: Sequence[ExtraModelLogger] | None = None,
) -> str:
    """Train one model as one MLflow run and return the run id.

    Raises ConfigError (no run created), TrackingServerError (no run created),
    TrackingFailedError when tracking fails mid-run (its message says how to resume),
    or whatever training raised (the run is marked FAILED / KILLED first).
    """
    import mlflow
    from mlflow import MlflowClient

    from ctr.training import fit

    attached_run_id = os.environ.get("MLFLOW_RUN_ID") or None
    try:
        config = load_training_config(config_path, overrides, model)
        timeout = tracking_timeout()
    except CTRError as exc:
        if attached_run_id:  # `mlflow run` created the run already: close it honestly
            client = MlflowClient()
            _mark_failed(client, attached_run_id, exc, "FAILED")
            client.set_terminated(attached_run_id, "FAILED")
        raise
    uri = prepare_tracking_store(check_tracking_server())  # several processes may start at once

    with bounded_http_retries(timeout):
        if attached_run_id:
            run = retry_when_locked(mlflow.start_run, run_id=attached_run_id)
        else:
            # Pass the id on: when two processes create the experiment at once, MLflow's
            # set_experiment returns it to the loser without making it active, and a bare
            # start_run would then log into the Default experiment.
            experiment = retry_when_locked(mlflow.set_experiment, experiment_name)
            run = retry_when_locked(
                mlflow.start_run, run_name=run_name, experiment_id=experiment.experiment_id
            )
        run_id = run.info.run_id
        client = MlflowClient()
        loggers = (
            default_extra_model_loggers() if extra_model_loggers is None else extra_model_loggers
        )
        callback = MLflowCallback(run_id, client=client, extra_model_loggers=loggers)
        checkpoint_dir = Path(config.training.checkpoint_dir) / run_id
        logger.info(
            "run %s (experiment %s) at %s: training %s",
            run_id,
            run.info.experiment_id,
            uri,
            config.model_name,
        )
        try:
            mark_resumed(client, run_id, config)
            with sigterm_as_interrupt(), _no_artifact_progress_bars():
                fit(config, callbacks=[callback], checkpoint_dir=checkpoint_dir)
            if callback.history:  # what tracking added to the epochs (per-epoch hooks only)
                per_epoch = sum(callback.epoch_overhead_seconds) / len(callback.history)
                client.log_metric(run_id, "tracking_seconds_per_epoch", per_epoch)
                client.log_metric(
                    run_id, "tracking_overhead_fraction", callback.overhead_fraction()
                )
            mlflow.end_run(status="FINISHED")
        except KeyboardInterrupt as exc:
            _end_unfinished(client, run_id, exc, "KILLED", uri)
            raise
        except BaseException as exc:
            marked = _end_unfinished(client, run_id, exc, "FAILED", uri)
            if is_tracking_error(exc):
                resume = resume_command(run_id, checkpoint_dir, config_path, model, overrides)
                raise tracking_failed(
                    exc,
                    uri,
                    run_id,
                    marked_failed=marked,
                    checkpoint_dir=checkpoint_dir.resolve(),
                    resume=resume,
                    timeout=timeout,
                ) from exc
            exc.mlflow_run_id = run_id  # type: ignore[attr-defined]  # for the CLI's message
            raise
    logger.info("run %s finished; model at %s", run_id, callback.model_uri)
    return run_id


def _end_unfinished(client, run_id: str, exc: BaseException, status: str, uri: str) -> bool:
    """Record why the run did not finish and end it with `status`; return whether the
    server took the status. Never raises: after a tracking error each request is one
    quick attempt, and none is made to a server that no longer answers."""
    import mlflow

    with recording_after(exc, uri) as worth_trying:
        if worth_trying:
            _mark_failed(client, run_id, exc, status)
        try:
            if mlflow.active_run() is not None:
                mlflow.end_run(status=status)  # leaves the run even when the request fails
            elif worth_trying:  # ending it FINISHED failed: the run was left already
                client.set_terminated(run_id, status)
            return worth_trying
        except Exception as end_exc:
            if worth_trying:  # else the server is known to be gone: the error says so
                logger.warning("could not mark run %s %s: %s", run_id, status, end_exc)
            return False


def train_untracked(
    config_path: str | Path | None, overrides: Sequence[str] = (), *, model: str | None = None
) -> str:
    """Train without MLflow (`ctr train --no-track`); return the summary to print."""
    from ctr.training import fit

    config = load_training_config(config_path, overrides, model)
    summary = fit(config).summary
    return format_summary(
        summary,
        model=config.model_name,
        monitor=config.training.monitor,
        best_epoch=int(summary["best_epoch"]),
        epochs_run=int(summary["epochs_run"]),
        stopped_early=bool(summary["stopped_early"]),
        checkpoint=summary["best_checkpoint"],
    )


# ---------------------------------------------------------------- the summary
# the summary table's columns: (title, metric name after the val_ / test_ prefix)
SUMMARY_COLUMNS = (
    ("HR@10", "hr_at_10"),
    ("NDCG@10", "ndcg_at_10"),
    ("full NDCG@10", "full_ndcg_at_10"),
    ("AUC", "auc"),
)


@dataclass(frozen=True)
class RunLocation:
    """Where a tracked run is: enough to open it in the UI or name it to ctr commands."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    run_id: str

    def ui_url(self) -> str | None:
        """The run's page in the MLflow UI, when the tracking URI is an http(s) server."""
        if not is_server_uri(self.tracking_uri):
            return None
        base = self.tracking_uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def format_summary(
    metrics: Mapping[str, Any],
    *,
    model: str,
    monitor: str,
    best_epoch: int,
    epochs_run: int,
    stopped_early: bool = False,
    run: RunLocation | None = None,
    checkpoint: str | Path | None = None,
) -> str:
    """What `ctr train` prints at the end: the best epoch's validation and test
    metrics as a table, where the run is, and the commands to look at it next.

    `metrics` holds best_val_* and test_* values (a run's MLflow metrics or the
    trainer's summary); a missing one shows as '-'. Without `run` (an untracked
    run) the checkpoint path and `ctr evaluate` are given instead.
    """
    stop = " (stopped early)" if stopped_early else ""
    lines = [f"{model}: best epoch {best_epoch} of {epochs_run}{stop}, chosen on {monitor}", ""]
    widths = [max(len(title), 6) for title, _ in SUMMARY_COLUMNS]
    header = "  ".join(f"{t:>{w}}" for (t, _), w in zip(SUMMARY_COLUMNS, widths, strict=True))
    lines.append(f"{'':<10}  {header}")
    for label, prefix in (("validation", "best_val_"), ("test", "test_")):
        cells = []
        for (_, name), width in zip(SUMMARY_COLUMNS, widths, strict=True):
            value = metrics.get(prefix + name)
            cells.append(f"{'-' if value is None else f'{float(value):.4f}':>{width}}")
        lines.append(f"{label:<10}  {'  '.join(cells)}")
    lines.append("")
    if run is None:
        lines.append(f"not tracked; best checkpoint: {checkpoint}")
        lines += ["", "next:", f"  ctr evaluate --checkpoint {shlex.quote(str(checkpoint))}"]
        return "\n".join(lines)

    experiment = shlex.quote(run.experiment_name)
    lines.append(f"run {run.run_id} in experiment {run.experiment_name}")
    lines.append(f"tracking URI: {run.tracking_uri}")
    url = run.ui_url()
    if url:
        lines.append(f"in the UI: {url}")
    if checkpoint:
        lines.append(f"best checkpoint: {checkpoint}")
    lines += ["", "next:"]
    if url is None:
        lines.append(
            f"  mlflow ui --backend-store-uri {shlex.quote(run.tracking_uri)}"
            f"  # the UI, then open http://127.0.0.1:5000"
        )
    lines.append(f"  ctr compare --experiment {experiment}  # this run beside the others")
    lines.append(f"  ctr promote --experiment {experiment}  # register the best run's model")
    return "\n".join(lines)


def run_summary(run_id: str, client: MlflowClient | None = None) -> str:
    """The summary of a finished tracked run, read back from MLflow (so it shows
    what the run recorded)."""
    import mlflow
    from mlflow import MlflowClient

    client = client or MlflowClient()
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    tags = run.data.tags
    checkpoint_dir = tags.get("checkpoint_dir")
    return format_summary(
        run.data.metrics,
        model=tags.get("model", run.data.params.get("model", "?")),
        monitor=run.data.params.get("training.monitor", "the validation metric"),
        best_epoch=int(tags.get("best_epoch", 0)),
        epochs_run=int(tags.get("epochs_run", 0)),
        stopped_early=tags.get("stopped_early") == "true",
        run=RunLocation(
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_id=experiment.experiment_id,
            experiment_name=experiment.name,
            run_id=run_id,
        ),
        checkpoint=Path(checkpoint_dir) / "best.pt" if checkpoint_dir else None,
    )
