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

A sweep trial (experiments.sweep_trial) is such a run too, with keyword options:
nested under its sweep's parent run, tagged, without the test split, with the
Optuna pruning callback, and `RunHooks` that record the run on the trial and
end a pruned trial FINISHED.

`ctr train` then prints `run_summary(run_id)` (experiments.train_summary): the
best epoch's validation and test metrics, where the run is, and the commands to
open, compare and promote it. `train_untracked` (`ctr train --no-track`) trains
without MLflow and returns the same table with the checkpoint path.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ctr.config import ConfigError, ExperimentConfig, load_config
from ctr.errors import CTRError
from ctr.training import distributed
from ctr.utils import get_logger
from experiments.launch import record_run_id
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
from experiments.train_summary import (  # noqa: F401  (part of this API, as before)
    RunLocation,
    format_summary,
    run_summary,
)

if TYPE_CHECKING:
    from ctr.training.callbacks import Callback

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


def _mark_failed(
    client, run_id: str, exc: BaseException, status: str, tags: Mapping[str, str] | None = None
) -> None:
    """Tag and annotate a run that did not finish (with `tags` besides); never raises."""
    from mlflow.entities import RunTag

    text = f"{type(exc).__name__}: {exc}"
    try:
        client.log_batch(
            run_id,
            tags=[
                *(RunTag(k, v) for k, v in (tags or {}).items()),
                RunTag(ERROR_TAG, text[:_MAX_TAG_CHARS]),
                RunTag("status_reason", status),
            ],
        )
        client.log_text(
            run_id,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            TRACEBACK_ARTIFACT,
        )
    except Exception as log_exc:  # the server may be the reason we failed
        logger.warning("could not record the failure on run %s: %s", run_id, log_exc)


@dataclass(frozen=True)
class RunEnd:
    """How a tracked run ends: its status and the tags recorded as it ends."""

    status: str  # FINISHED, FAILED or KILLED
    tags: Mapping[str, str] = field(default_factory=dict)


class RunHooks:
    """What a caller of `run_training` adds at its run's start and end; by default nothing.

    A sweep trial (experiments.sweep_trial) records its run on the Optuna trial
    when it starts, tags it with how it ended, and ends a pruned trial FINISHED.
    """

    def started(self, run_id: str) -> None:
        """The run exists; no data has been read yet."""

    def ending(self, exc: BaseException | None, status: str) -> RunEnd:
        """How the run ends, given what training raised (None when it finished) and
        the status run_training would give it: FINISHED, FAILED, or KILLED after
        Ctrl-C / SIGTERM. A run that raised and ends FINISHED gets no error tag; the
        error is raised either way. Called while the run ends: make no requests."""
        return RunEnd(status)


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
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    test_split: bool = True,
    callbacks: Sequence[Callback] = (),
    hooks: RunHooks | None = None,
) -> str | None:
    """Train one model as one MLflow run and return the run id.

    Under torchrun rank 0 alone creates and logs the run (tagged ctr.world_size);
    the other ranks train their part, track nothing and return None.

    Args:
        config_path, overrides, model: the config (see `load_training_config`).
        experiment_name, run_name: where the run goes and its name.
        extra_model_loggers: models logged beside the PyTorch model
            (default: `default_extra_model_loggers()`).
        experiment_id: the experiment by id, instead of `experiment_name`.
        parent_run_id: nest the run under this run (`mlflow.parentRunId`).
        tags: tags the run starts with.
        test_split: False leaves the test split out of training: no test_* metric
            (a sweep trial is chosen, and judged, on validation alone).
        callbacks: trainer callbacks after the MLflow callback (e.g. OptunaPruning).
        hooks: the caller's part in the run's start and end (`RunHooks`).

    Raises ConfigError (no run created), TrackingServerError (no run created),
    TrackingFailedError when tracking fails mid-run (its message says how to resume),
    or whatever training raised (the run is ended as `hooks.ending` says first:
    by default FAILED, or KILLED on Ctrl-C / SIGTERM).
    """
    import mlflow
    from mlflow import MlflowClient

    hooks = hooks or RunHooks()
    tags = dict(tags) if tags else None  # what mlflow.start_run takes
    if distributed.launched_by_torchrun():
        tags = {**(tags or {}), "ctr.world_size": os.environ["WORLD_SIZE"]}
    attached_run_id = os.environ.get("MLFLOW_RUN_ID") or None
    try:
        config = load_training_config(config_path, overrides, model)
        timeout = tracking_timeout()
    except CTRError as exc:
        if attached_run_id and distributed.launched_rank() == 0:  # `mlflow run`'s: close it
            client = MlflowClient()
            _mark_failed(client, attached_run_id, exc, "FAILED")
            client.set_terminated(attached_run_id, "FAILED")
        raise
    if distributed.launched_rank() != 0:  # torchrun's other ranks: train, track nothing
        _fit(config, [], None, test_split)
        return None
    uri = prepare_tracking_store(check_tracking_server())  # several processes may start at once

    with bounded_http_retries(timeout):
        if attached_run_id:
            run = retry_when_locked(mlflow.start_run, run_id=attached_run_id, tags=tags)
        else:
            if experiment_id is None:
                experiment = retry_when_locked(mlflow.set_experiment, experiment_name)
                experiment_id = experiment.experiment_id
            # Pass the id on: when two processes create the experiment at once, MLflow's
            # set_experiment returns it to the loser without making it active, and a bare
            # start_run would then log into the Default experiment.
            run = retry_when_locked(
                mlflow.start_run,
                run_name=run_name,
                experiment_id=experiment_id,
                parent_run_id=parent_run_id,
                tags=tags,
            )
        run_id = run.info.run_id
        record_run_id(run_id)  # for `ctr train --nproc`, which ends it if rank 0 cannot
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
            hooks.started(run_id)
            mark_resumed(client, run_id, config)
            with sigterm_as_interrupt(), _no_artifact_progress_bars():
                _fit(config, [callback, *callbacks], checkpoint_dir, test_split)
            if callback.history:  # what tracking added to the epochs (per-epoch hooks only)
                per_epoch = sum(callback.epoch_overhead_seconds) / len(callback.history)
                client.log_metric(run_id, "tracking_seconds_per_epoch", per_epoch)
                client.log_metric(
                    run_id, "tracking_overhead_fraction", callback.overhead_fraction()
                )
            end = hooks.ending(None, "FINISHED")
            if end.tags:
                _log_tags(client, run_id, end.tags)
            mlflow.end_run(status=end.status)
        except KeyboardInterrupt as exc:
            _end_unfinished(client, run_id, exc, hooks.ending(exc, "KILLED"), uri)
            raise
        except BaseException as exc:
            end = hooks.ending(exc, "FAILED")
            marked = _end_unfinished(client, run_id, exc, end, uri)
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


def _fit(
    config: ExperimentConfig, callbacks: list[Callback], checkpoint_dir: Path | None, split: bool
) -> None:
    """`ctr.training.fit` (under torchrun, one rank's part), optionally without the test split."""
    from ctr.training.device import resolve_device
    from ctr.training.run import build_data, build_trainer

    with distributed.process_group(resolve_device(config.training.device)):
        data = build_data(config)
        if not split:
            data = data._replace(test_ds=None)
        trainer, _ = build_trainer(config, callbacks, checkpoint_dir, data=data)
        trainer.fit()


def _end_unfinished(client, run_id: str, exc: BaseException, end: RunEnd, uri: str) -> bool:
    """Record why the run did not finish and end it as `end` says; return whether the
    server took the status. Never raises: after a tracking error each request is one
    quick attempt, and none is made to a server that no longer answers."""
    import mlflow

    with recording_after(exc, uri) as worth_trying:
        if worth_trying and end.status != "FINISHED":
            _mark_failed(client, run_id, exc, end.status, end.tags)
        elif worth_trying and end.tags:
            try:
                _log_tags(client, run_id, end.tags)
            except Exception as log_exc:
                logger.warning("could not tag run %s: %s", run_id, log_exc)
        try:
            if mlflow.active_run() is not None:
                mlflow.end_run(status=end.status)  # leaves the run even when the request fails
            elif worth_trying:  # ending it FINISHED failed: the run was left already
                client.set_terminated(run_id, end.status)
            return worth_trying
        except Exception as end_exc:
            if worth_trying:  # else the server is known to be gone: the error says so
                logger.warning("could not mark run %s %s: %s", run_id, end.status, end_exc)
            return False


def _log_tags(client, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def train_untracked(
    config_path: str | Path | None, overrides: Sequence[str] = (), *, model: str | None = None
) -> str:
    """Train without MLflow (`ctr train --no-track`); the summary to print ("" off rank 0)."""
    from ctr.training import fit

    config = load_training_config(config_path, overrides, model)
    summary = fit(config).summary
    if distributed.launched_rank() != 0:
        return ""
    return format_summary(
        summary,
        model=config.model_name,
        monitor=config.training.monitor,
        best_epoch=int(summary["best_epoch"]),
        epochs_run=int(summary["epochs_run"]),
        stopped_early=bool(summary["stopped_early"]),
        checkpoint=summary["best_checkpoint"],
    )
