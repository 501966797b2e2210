"""One trial of a sweep: a tracked training run nested under the sweep's parent run.

    value = run_trial(spec, trial)  # the best validation monitor value

The trial trains through `experiments.train.run_training`, the code of `ctr
train` (bounded tracking retries, the run ended FAILED / KILLED with its error),
with the options a trial needs:

- the run is a child of the parent run (`mlflow.parentRunId`) with the sweep's
  tags (experiments.sweep_runs), recorded on the Optuna trial when it starts;
- the test split is not built into the trainer: a trial is never scored on
  test, so the run has no test_* metric and the choice cannot lean on test;
- `OptunaPruning`, a trainer callback, reports the monitor every epoch and
  raises `optuna.TrialPruned` when the median pruner says stop. The trainer
  hands the error to its callbacks' `on_exception` and re-raises it;
  `TrialHooks` ends the run FINISHED with `sweep_state=pruned` (a pruned trial
  is a decision, not a failure) and the sweep tells Optuna PRUNED. Only complete
  trials log their model (MLflowCallback logs it in on_train_end, which a pruned
  trial never reaches).
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from ctr.training.callbacks import Callback, TrainingContext
from ctr.utils import get_logger
from experiments.sweep_runs import TAG_ROLE, TAG_STATE, TAG_SWEEP, TAG_TRIAL
from experiments.train import RunEnd, RunHooks

if TYPE_CHECKING:
    import optuna

    from experiments.sweep import SweepSpec

logger = get_logger("experiments.sweep")


class OptunaPruning(Callback):
    """Reports `monitor` (default: the config's training.monitor) to the Optuna trial
    after every epoch (step = epoch) and raises optuna.TrialPruned when the study's
    pruner says the trial is not worth finishing. Keeps the trainer's summary."""

    def __init__(self, trial: optuna.Trial, monitor: str | None = None) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_epoch: int | None = None
        self.summary: dict[str, Any] | None = None  # once training ends

    def on_train_begin(self, context: TrainingContext) -> None:
        self.monitor = self.monitor or context.config.training.monitor

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

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.summary = summary


class TrialHooks(RunHooks):
    """A trial's part in its run: the run id goes on the Optuna trial (so a sweep killed
    mid-trial can end the run later), and sweep_state says how the trial ended."""

    def __init__(self, trial: optuna.Trial, pruning: OptunaPruning) -> None:
        self.trial = trial
        self.pruning = pruning
        self.run_id: str | None = None

    def started(self, run_id: str) -> None:
        self.run_id = run_id
        self.trial.set_user_attr("mlflow_run_id", run_id)

    def ending(self, exc: BaseException | None, status: str) -> RunEnd:
        import optuna

        if exc is None:
            return RunEnd(status, {TAG_STATE: "complete"})
        if isinstance(exc, optuna.TrialPruned):
            epoch = str(self.pruning.pruned_epoch)
            return RunEnd("FINISHED", {TAG_STATE: "pruned", "sweep_pruned_epoch": epoch})
        return RunEnd(status, {TAG_STATE: "failed"})


def trial_overrides(spec: SweepSpec, values: dict[str, Any]) -> list[str]:
    """The trial's config overrides: one torch thread per process when trials run in
    parallel (first, so that a training.num_threads the user gave wins), the user's
    overrides, the sampled values, and the tuning seed."""
    threads = ["training.num_threads=1"] if spec.jobs > 1 else []
    return [*threads, *spec.overrides, *spec.space.overrides(values), f"seed={spec.seed}"]


def run_trial(spec: SweepSpec, trial: optuna.Trial) -> float:
    """Train the trial's config as a nested MLflow run; return its best monitor value.

    Raises optuna.TrialPruned (run FINISHED, tagged pruned), TrackingFailedError (the
    tracking server failed; the message says how to continue the sweep), or the
    training error (run FAILED, or KILLED on Ctrl-C / SIGTERM; tagged failed).
    """
    import optuna

    from experiments.tracking_errors import TrackingFailedError
    from experiments.train import run_training

    values = spec.space.suggest(trial)
    pruning = OptunaPruning(trial)
    hooks = TrialHooks(trial, pruning)
    try:
        run_training(
            spec.config_path,
            trial_overrides(spec, values),
            run_name=f"{spec.name}-trial-{trial.number}",
            model=spec.model,
            experiment_id=spec.experiment_id,
            parent_run_id=spec.parent_run_id,
            tags={
                TAG_SWEEP: spec.name,
                TAG_ROLE: "trial",
                TAG_TRIAL: str(trial.number),
                TAG_STATE: "running",
            },
            test_split=False,
            callbacks=[pruning],
            hooks=hooks,
        )
    except optuna.TrialPruned:
        logger.info(
            "trial %d (run %s): pruned after epoch %d",
            trial.number,
            hooks.run_id,
            pruning.pruned_epoch,
        )
        raise
    except TrackingFailedError as exc:
        # the `ctr train` that run_training offers would continue the run outside the
        # sweep (scored on test, its Optuna trial left failed): the sweep goes on instead
        raise TrackingFailedError(
            f"{str(exc).splitlines()[0]}\nthe trial counts as failed; once the server "
            f"works, continue the sweep with:\n  {continue_command(spec)}"
        ) from exc
    assert pruning.summary is not None  # run_training returned: training ended
    value = float(pruning.summary[f"best_{pruning.monitor}"])
    logger.info(
        "trial %d (run %s): complete, best %s %.4f at epoch %d",
        trial.number,
        hooks.run_id,
        pruning.monitor,
        value,
        pruning.summary["best_epoch"],
    )
    return value


def continue_command(spec: SweepSpec) -> str:
    """`ctr sweep` continuing this sweep by one trial (a custom --search-dir must be
    given again: the sweep refuses another search space)."""
    words = ["ctr", "sweep", "--model", spec.model, "--name", spec.name, "--trials", "1"]
    words += ["--seed", str(spec.seed), "--storage", spec.storage]
    if spec.config_path:
        words += ["--config", spec.config_path]
    if spec.overrides:
        words += ["--override", *spec.overrides]
    return " ".join(shlex.quote(w) for w in words)
