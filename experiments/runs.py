"""Queries over the finished training runs of an experiment (compare and promote).

    client = get_client()
    experiment, runs = ranked_runs(client, "movielens-100k", "val_ndcg_at_10")
    best = runs[0]
    metric_value(best, "val_ndcg_at_10")  # the best epoch's value (best_val_ndcg_at_10)

A training run is a run with a `model` tag or param; val metrics are read from
the run's best epoch (`best_val_*`, logged at the end of a run), every other
metric as logged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from ctr.errors import CTRError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

DEFAULT_METRIC = "val_ndcg_at_10"


class RunQueryError(CTRError):
    """An unknown experiment, metric or filter, or no finished runs to choose from."""


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith("_seconds")


def get_client(client: MlflowClient | None = None) -> MlflowClient:
    """`client`, or a client of the current tracking URI."""
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def find_experiment(client: MlflowClient, name: str) -> Experiment:
    """The experiment called `name`; RunQueryError lists the existing ones otherwise."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments(max_results=1000))
        raise RunQueryError(
            f"no experiment named {name!r}; existing experiments: {', '.join(names) or '(none)'}"
        )
    return experiment


def finished_runs(
    client: MlflowClient, experiment_id: str, filter_string: str | None = None
) -> list[Run]:
    """All FINISHED training runs (runs with a `model` tag) of an experiment."""
    from mlflow.exceptions import MlflowException

    query = _finished_query(filter_string)
    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                [experiment_id], filter_string=query, max_results=1000, page_token=token
            )
        except MlflowException as exc:
            raise RunQueryError(f"invalid --filter {filter_string!r}: {exc.message}") from None
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [r for r in runs if is_training_run(r)]


def is_training_run(run: Run) -> bool:
    return "model" in run.data.tags or "model" in run.data.params


def metric_value(run: Run, metric: str) -> float | None:
    """A run's value of `metric`: for val_* the best epoch's value (best_val_*)."""
    metrics = run.data.metrics
    if metric.startswith("val_") and f"best_{metric}" in metrics:
        return metrics[f"best_{metric}"]
    return metrics.get(metric)


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """The metric names the runs have, as metric_value takes them (best_val_x -> val_x)."""
    names: set[str] = set()
    for run in runs:
        for key in run.data.metrics:
            names.add(key[len("best_") :] if key.startswith("best_val_") else key)
    return sorted(names)


def check_metric(runs: Sequence[Run], metric: str) -> None:
    """RunQueryError naming the metrics that exist when no run has `metric`."""
    if not any(metric_value(r, metric) is not None for r in runs):
        raise RunQueryError(
            f"no finished run has the metric {metric!r}; metrics that exist: "
            f"{', '.join(available_metrics(runs)) or '(none)'}"
        )


def sort_runs(runs: Sequence[Run], metric: str) -> list[Run]:
    """Runs with the metric, best first (ties: the earlier run first)."""
    sign = 1.0 if lower_is_better(metric) else -1.0
    scored = [r for r in runs if metric_value(r, metric) is not None]
    return sorted(scored, key=lambda r: (sign * metric_value(r, metric), r.info.start_time or 0))


def _finished_query(filter_string: str | None) -> str:
    query = "attributes.status = 'FINISHED'"
    if filter_string and filter_string.strip():
        query = f"{query} and {filter_string.strip()}"
    return query


def top_runs(
    client: MlflowClient,
    experiment_id: str,
    metric: str,
    filter_string: str | None,
    top: int,
) -> list[Run] | None:
    """The `top` best finished training runs by `metric`, fetching only those: the
    store sorts by the metric, and only runs that could outrank them come back.

    Every run's whole record (params, metrics, tags) is a lot to send: about
    11 MB of JSON and several CPU seconds, server and client, for 1,000 runs.
    None when fewer than `top` runs have the metric's key (the caller ranks all
    runs instead, and says what is missing).
    """
    from mlflow.exceptions import MlflowException

    key = f"best_{metric}" if metric.startswith("val_") else metric  # see metric_value
    direction, at_least = ("ASC", "<=") if lower_is_better(metric) else ("DESC", ">=")
    try:
        head = client.search_runs(
            [experiment_id],
            filter_string=_finished_query(filter_string),
            # runs without the metric come last either way; ties: the earlier run first
            order_by=[f"metrics.`{key}` {direction}", "attributes.start_time ASC"],
            max_results=top + 10,  # room for runs that are no training runs
        )
    except MlflowException as exc:
        raise RunQueryError(f"invalid --filter {filter_string!r}: {exc.message}") from None
    head = [r for r in head if key in r.data.metrics and is_training_run(r)][:top]
    if len(head) < top or not math.isfinite(metric_value(head[-1], metric)):
        return None
    if key != metric:
        # a run without best_<metric> is ranked by <metric> itself: fetch those that tie
        # with the last of the top or beat it
        bound = format(Decimal(repr(metric_value(head[-1], metric))), "f")  # no 1e-05: no '+'
        given = f"{filter_string.strip()} and " if filter_string and filter_string.strip() else ""
        query = f"{given}metrics.`{metric}` {at_least} {bound}"
        others = finished_runs(client, experiment_id, query)
        head += [r for r in others if key not in r.data.metrics]
    return sort_runs(head, metric)[:top]


def ranked_runs(
    client: MlflowClient,
    experiment: str,
    metric: str = DEFAULT_METRIC,
    filter_string: str | None = None,
    purpose: str = "",
    top: int | None = None,
) -> tuple[Experiment, list[Run]]:
    """The experiment and its finished training runs that have `metric`, best first
    (with `top`: the best `top` only, fetched alone where the store can: top_runs).

    RunQueryError when the experiment is unknown, the filter invalid, no run is
    finished (`purpose`, e.g. " to promote", ends that message) or none has
    the metric.
    """
    exp = find_experiment(client, experiment)
    if top is not None:
        best = top_runs(client, exp.experiment_id, metric, filter_string, top)
        if best is not None:
            return exp, best
    runs = finished_runs(client, exp.experiment_id, filter_string)
    if not runs:
        where = f" matching {filter_string!r}" if filter_string else ""
        raise RunQueryError(
            f"experiment {experiment!r} has no finished training runs{where}{purpose}"
        )
    check_metric(runs, metric)
    return exp, sort_runs(runs, metric)[:top]
