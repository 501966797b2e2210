"""One trial of a sweep: a tracked training run nested under the sweep's parent run.

    value = run_trial(spec, trial, client)  # the best validation monitor value

What differs from `experiments.train.run_training`:

- the run is a child of the parent run (`mlflow.parentRunId`) with the sweep's
  tags (experiments.sweep_runs);
- the test split is not built into the trainer: a trial is never scored on
  test, so the run has no test_* metric and the choice cannot lean on test;
- `OptunaPruning`, a trainer callback, reports the monitor every epoch and
  raises `optuna.TrialPruned` when the median pruner says stop. The trainer
  hands the error to its callbacks' `on_exception` and re-raises it; here it
  ends the run FINISHED with `sweep_state=pruned` (a pruned trial is a
  decision, not a failure) and tells Optuna PRUNED. Only complete trials log
  their model (MLflowCallback logs it in on_train_end, which a pruned trial
  never reaches).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.training.callbacks import Callback
from ctr.utils import get_logger
from experiments.sweep_runs import TAG_ROLE, TAG_STATE, TAG_SWEEP, TAG_TRIAL

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from experiments.sweep import SweepSpec

logger = get_logger("experiments.sweep")


class OptunaPruning(Callback):
    """Reports `monitor` to the Optuna trial after every epoch (step = epoch) and raises
    optuna.TrialPruned when the study's pruner says the trial is not worth finishing."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        value = float(metrics[self.monitor])
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            raise optuna.TrialPruned(
                f"trial {self.trial.number} pruned after epoch {epoch}: {self.monitor} "
                f"{value:.4f} is worse than the median of the earlier trials at that epoch"
            )


def trial_overrides(spec: SweepSpec, values: dict[str, Any]) -> list[str]:
    """The trial's config overrides: one torch thread per process when trials run in
    parallel (first, so that a training.num_threads the user gave wins), the user's
    overrides, the sampled values, and the tuning seed."""
    threads = ["training.num_threads=1"] if spec.jobs > 1 else []
    return [*threads, *spec.overrides, *spec.space.overrides(values), f"seed={spec.seed}"]


def run_trial(spec: SweepSpec, trial: optuna.Trial, client: MlflowClient) -> float:
    """Train the trial's config as a nested MLflow run; return its best monitor value.

    Raises optuna.TrialPruned (run FINISHED, tagged pruned), or the training error
    (run FAILED, or KILLED on Ctrl-C / SIGTERM; tagged failed).
    """
    import mlflow
    import optuna
    from mlflow.entities import RunTag

    from ctr.training.run import build_data, build_trainer
    from experiments.store import retry_when_locked
    from experiments.tracking import MLflowCallback
    from experiments.train import (
        _mark_failed,
        _no_artifact_progress_bars,
        default_extra_model_loggers,
        load_training_config,
        sigterm_as_interrupt,
    )

    values = spec.space.suggest(trial)
    config = load_training_config(spec.config_path, trial_overrides(spec, values), spec.model)
    run = retry_when_locked(
        mlflow.start_run,
        experiment_id=spec.experiment_id,
        run_name=f"{spec.name}-trial-{trial.number}",
        parent_run_id=spec.parent_run_id,
        tags={
            TAG_SWEEP: spec.name,
            TAG_ROLE: "trial",
            TAG_TRIAL: str(trial.number),
            TAG_STATE: "running",
        },
    )
    run_id = run.info.run_id
    trial.set_user_attr("mlflow_run_id", run_id)

    def state(value: str) -> None:
        client.set_tag(run_id, TAG_STATE, value)

    callback = MLflowCallback(
        run_id, client=client, extra_model_loggers=default_extra_model_loggers()
    )
    pruning = OptunaPruning(trial, config.training.monitor)
    # the test split stays out: a trial is chosen, and judged, on validation alone
    data = build_data(config)._replace(test_ds=None)
    checkpoint_dir = Path(config.training.checkpoint_dir) / run_id
    try:
        with sigterm_as_interrupt(), _no_artifact_progress_bars():
            trainer, _ = build_trainer(config, [callback, pruning], checkpoint_dir, data=data)
            summary = trainer.fit()
    except optuna.TrialPruned:
        client.log_batch(
            run_id,
            tags=[
                RunTag(TAG_STATE, "pruned"),
                RunTag("sweep_pruned_epoch", str(pruning.pruned_epoch)),
            ],
        )
        mlflow.end_run(status="FINISHED")
        logger.info(
            "trial %d (run %s): pruned after epoch %d", trial.number, run_id, pruning.pruned_epoch
        )
        raise
    except KeyboardInterrupt as exc:
        _mark_failed(client, run_id, exc, "KILLED")
        state("failed")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as exc:
        _mark_failed(client, run_id, exc, "FAILED")
        state("failed")
        mlflow.end_run(status="FAILED")
        exc.mlflow_run_id = run_id  # type: ignore[attr-defined]
        raise
    value = float(summary[f"best_{config.training.monitor}"])
    state("complete")
    mlflow.end_run(status="FINISHED")
    logger.info(
        "trial %d (run %s): complete, best %s %.4f at epoch %d",
        trial.number,
        run_id,
        config.training.monitor,
        value,
        summary["best_epoch"],
    )
    return value
