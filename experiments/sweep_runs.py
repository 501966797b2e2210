"""A sweep's MLflow runs: the parent run, its trials, and what the parent records.

    parent = find_sweep(client, "deepfm")           # the parent run, found by its tags
    trials = sweep_trials(client, parent)           # every trial run, any state
    cmp = compare_sweep("deepfm")                   # `ctr compare --sweep deepfm`
    sweep_selection("deepfm")                       # what `ctr promote --sweep` ranks

One parent run per sweep (tags `sweep=<name>`, `sweep_role=parent`) and one
nested run per trial (`mlflow.parentRunId`, `sweep_role=trial`, `sweep_trial=<n>`,
`sweep_state` = running, complete, pruned or failed). A pruned trial's run ends
FINISHED: it was stopped on purpose, not broken.

The parent has no `model` tag or param, so `ctr compare` and `ctr promote` never
take it for a training run. Its best-trial record lives in tags and metrics,
which may change as the sweep goes on (MLflow params cannot): `best_trial`,
`best_run_id`, `best.<config key>` per tuned key and the metric
`best_<monitor>` (step = trials finished); the artifacts under `sweep/` hold the
search space, the base config, the trials table and Optuna's plots.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from ctr.utils import get_logger
from experiments.compare import Comparison, compare_url
from experiments.runs import RunQueryError, get_client, lower_is_better, metric_value

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = get_logger("experiments.sweep")

TAG_SWEEP = "sweep"
TAG_ROLE = "sweep_role"  # parent | trial
TAG_TRIAL = "sweep_trial"
TAG_STATE = "sweep_state"  # running | complete | pruned | failed
TAG_MONITOR = "sweep_monitor"
TAG_MODEL = "sweep_model"
TAG_DIMENSIONS = "sweep_dimensions"  # JSON list of the tuned config keys
STATES = ("complete", "pruned", "failed", "running")


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=1000)]


def sweep_parents(
    client: MlflowClient, name: str, experiment_ids: list[str] | None = None
) -> list[Run]:
    """The parent runs tagged as sweep `name` (in `experiment_ids`, default: all)."""
    return client.search_runs(
        experiment_ids or _all_experiment_ids(client),
        filter_string=f"tags.{TAG_SWEEP} = '{name}' and tags.{TAG_ROLE} = 'parent'",
        max_results=100,
    )


def find_sweep(
    client: MlflowClient, name: str, experiment_ids: list[str] | None = None
) -> Run | None:
    """The parent run of sweep `name` (in `experiment_ids`, default: every experiment)."""
    runs = sweep_parents(client, name, experiment_ids)
    if len(runs) > 1:
        where = sorted(client.get_experiment(r.info.experiment_id).name for r in runs)
        raise RunQueryError(
            f"{len(runs)} sweeps are named {name!r} (in experiments {', '.join(where)}); "
            f"pass --experiment to pick one"
        )
    return runs[0] if runs else None


def require_sweep(client: MlflowClient, name: str, experiment: str | None = None) -> Run:
    """find_sweep, or RunQueryError naming the sweeps that exist."""
    ids = None
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise RunQueryError(f"no experiment named {experiment!r}")
        ids = [exp.experiment_id]
    parent = find_sweep(client, name, ids)
    if parent is None:
        known = client.search_runs(
            ids or _all_experiment_ids(client),
            filter_string=f"tags.{TAG_ROLE} = 'parent'",
            max_results=200,
        )
        names = sorted({r.data.tags.get(TAG_SWEEP, "?") for r in known})
        raise RunQueryError(
            f"no sweep named {name!r}; sweeps: {', '.join(names) or '(none)'} "
            f"(start one with `ctr sweep --model MODEL --name {name}`)"
        )
    return parent


def sweep_trials(client: MlflowClient, parent: Run, extra_filter: str | None = None) -> list[Run]:
    """Every trial run of the sweep (any status)."""
    query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.{TAG_ROLE} = 'trial'"
    if extra_filter and extra_filter.strip():
        query += f" and {extra_filter.strip()}"
    runs, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], filter_string=query, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_state(run: Run) -> str:
    return run.data.tags.get(TAG_STATE, "running")


def rank_trials(runs: list[Run], metric: str) -> list[Run]:
    """Complete trials best first, then pruned ones (by their last value), then the rest."""
    sign = 1.0 if lower_is_better(metric) else -1.0

    def key(run: Run):
        state = trial_state(run)
        value = metric_value(run, metric)
        rank = STATES.index(state) if state in STATES else len(STATES)
        return (rank, value is None, sign * (value or 0.0), int(run.data.tags.get(TAG_TRIAL, 0)))

    return sorted(runs, key=key)


def compare_sweep(
    name: str,
    metric: str | None = None,
    top: int | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    client: MlflowClient | None = None,
) -> Comparison:
    """`ctr compare --sweep NAME`: the sweep's trials, best first, with the tuned params
    and each trial's state. `metric` defaults to the sweep's monitor; a complete trial
    shows its best epoch's value, a pruned one the value of its last epoch."""
    client = get_client(client)
    parent = require_sweep(client, name, experiment)
    metric = metric or parent.data.tags.get(TAG_MONITOR, "val_ndcg_at_10")
    keys = json.loads(parent.data.tags.get(TAG_DIMENSIONS, "[]"))
    runs = rank_trials(sweep_trials(client, parent, filter_string), metric)
    if top is not None:
        runs = runs[:top]
    rows = []
    for run in runs:
        tags = run.data.tags
        row: dict[str, Any] = {
            "trial": int(tags.get(TAG_TRIAL, -1)),
            "state": trial_state(run),
            metric: metric_value(run, metric),
            "best_epoch": tags.get("best_epoch") or tags.get("sweep_pruned_epoch"),
            "run_id": run.info.run_id,
        }
        row.update({k: run.data.params.get(k) for k in keys})
        rows.append(row)
    experiment_obj = client.get_experiment(parent.info.experiment_id)
    from experiments.compare import _tracking_uri

    ids = [r.info.run_id for r in runs]
    return Comparison(
        experiment_id=parent.info.experiment_id,
        experiment_name=experiment_obj.name,
        metric=metric,
        columns=list(rows[0]) if rows else ["trial", "state", metric],
        rows=rows,
        run_ids=ids,
        ui_url=compare_url(_tracking_uri(client), parent.info.experiment_id, ids),
        runs=list(runs),
        title=(
            f"sweep {name!r} (parent run {parent.info.run_id}, experiment "
            f"{experiment_obj.name!r}): {len(rows)} trials, best first by {metric} "
            f"({'lower' if lower_is_better(metric) else 'higher'} is better)"
        ),
    )


def sweep_selection(
    name: str,
    metric: str | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    client: MlflowClient | None = None,
) -> dict[str, str]:
    """The run-query arguments (experiment, metric, filter_string) that make
    `promote_best_run` rank the complete trials of sweep `name` only."""
    client = get_client(client)
    parent = require_sweep(client, name, experiment)
    query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.{TAG_STATE} = 'complete'"
    if filter_string and filter_string.strip():
        query += f" and {filter_string.strip()}"
    return {
        "experiment": client.get_experiment(parent.info.experiment_id).name,
        "metric": metric or parent.data.tags.get(TAG_MONITOR, "val_ndcg_at_10"),
        "filter_string": query,
    }


# ---------------------------------------------------------------- the parent
def record_best(client: MlflowClient, parent_id: str, study: optuna.Study, space) -> None:
    """Put the best complete trial so far on the parent (tags and the metric)."""
    from mlflow.entities import Metric, RunTag
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    tags = [
        RunTag("trials_complete", str(counts[TrialState.COMPLETE])),
        RunTag("trials_pruned", str(counts[TrialState.PRUNED])),
        RunTag("trials_failed", str(counts[TrialState.FAIL])),
    ]
    metrics = []
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        monitor = study.user_attrs.get("monitor", "value")
        tags += [
            RunTag("best_trial", str(best.number)),
            RunTag("best_run_id", str(best.user_attrs.get("mlflow_run_id", ""))),
        ]
        values = space.decode(best.params)
        tags += [RunTag(f"best.{k}", json.dumps(v)) for k, v in values.items()]
        metrics.append(Metric(f"best_{monitor}", float(best.value), _now_ms(), len(finished)))
    client.log_batch(parent_id, metrics=metrics, tags=tags)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def record_summary(client: MlflowClient, parent_id: str, study: optuna.Study, space) -> None:
    """record_best, plus the trials table, the best trial as JSON and Optuna's plots
    (the optimisation history; the parameter importances once 2 trials are complete)."""
    from optuna.trial import TrialState

    record_best(client, parent_id, study, space)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs"))
    client.log_text(parent_id, table.to_csv(index=False), "sweep/trials.csv")
    if complete:
        best = study.best_trial
        client.log_dict(
            parent_id,
            {
                "trial": best.number,
                "value": best.value,
                "monitor": study.user_attrs.get("monitor"),
                "run_id": best.user_attrs.get("mlflow_run_id"),
                "params": space.decode(best.params),
                "overrides": space.overrides(space.decode(best.params)),
            },
            "sweep/best_trial.json",
        )
    _log_plots(client, parent_id, study, len(complete))


def _log_plots(client: MlflowClient, parent_id: str, study: optuna.Study, complete: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    plots = [("sweep/optimization_history.png", optuna_plots.plot_optimization_history)]
    if complete >= 2:  # the importances compare complete trials: one gives nothing to compare
        plots.append(("sweep/param_importances.png", optuna_plots.plot_param_importances))
    else:
        logger.info("no parameter importances yet: %d complete trial(s), 2 needed", complete)
    for path, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            try:
                axes = plot(study, target_name=study.user_attrs.get("monitor", "value"))
            except (ValueError, RuntimeError) as exc:  # e.g. no param varies between trials
                logger.warning("no %s: %s", path, exc)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        try:
            client.log_figure(parent_id, figure, path)
        finally:
            plt.close(figure)
