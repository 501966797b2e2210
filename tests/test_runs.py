"""experiments.runs: the run queries `ctr compare` and `ctr promote` share."""

from __future__ import annotations

import pytest

from experiments.runs import (
    RunQueryError,
    available_metrics,
    check_metric,
    lower_is_better,
    metric_value,
    ranked_runs,
    sort_runs,
)


def make_run(run_id: str, start_time: int, **metrics: float):
    """A real mlflow Run entity (as search_runs returns it) with the given metrics."""
    from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

    info = RunInfo(run_id, "0", "user", "FINISHED", start_time, start_time + 1, "active")
    data = RunData(
        metrics=[Metric(k, v, start_time, 0) for k, v in metrics.items()],
        tags=[RunTag("model", "lr")],
    )
    return Run(info, data)


def test_metric_direction():
    assert lower_is_better("val_logloss") and lower_is_better("train_loss")
    assert lower_is_better("epoch_seconds")
    assert not lower_is_better("val_ndcg_at_10") and not lower_is_better("test_auc")


def test_val_metrics_are_read_from_the_best_epoch():
    run = make_run("a", 1, val_ndcg_at_10=0.2, best_val_ndcg_at_10=0.3, test_auc=0.8)
    assert metric_value(run, "val_ndcg_at_10") == 0.3  # best epoch, not the last one
    assert metric_value(run, "test_auc") == 0.8
    assert metric_value(run, "val_auc") is None
    assert available_metrics([run]) == ["test_auc", "val_ndcg_at_10"]


def test_sort_puts_the_best_first_and_breaks_ties_by_start_time():
    late_tie = make_run("late", 30, best_val_ndcg_at_10=0.5, val_logloss=0.4)
    worse = make_run("worse", 10, best_val_ndcg_at_10=0.1, val_logloss=0.3)
    early_tie = make_run("early", 20, best_val_ndcg_at_10=0.5, val_logloss=0.5)
    no_metric = make_run("none", 5)
    runs = [late_tie, worse, no_metric, early_tie]
    by_ndcg = [r.info.run_id for r in sort_runs(runs, "val_ndcg_at_10")]
    assert by_ndcg == ["early", "late", "worse"]  # runs without the metric are left out
    assert [r.info.run_id for r in sort_runs(runs, "val_logloss")] == ["worse", "late", "early"]


def test_an_unknown_metric_names_the_metrics_that_exist():
    runs = [make_run("a", 1, best_val_ndcg_at_10=0.3, test_auc=0.8)]
    check_metric(runs, "test_auc")
    with pytest.raises(RunQueryError, match="'val_ndcg@10'; metrics that exist: test_auc, val_"):
        check_metric(runs, "val_ndcg@10")


@pytest.mark.slow
def test_ranked_runs_on_a_real_server(tracking_uri):
    """Only FINISHED runs with a `model` tag count; each way of finding nothing is named."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment("ctr-tests-runs")
    ids = {}
    for name, value, status, tags in [
        ("good", 0.3, "FINISHED", {"model": "lr"}),
        ("better", 0.4, "FINISHED", {"model": "fm"}),
        ("running", 0.9, "RUNNING", {"model": "lr"}),
        ("not-training", 0.9, "FINISHED", {}),
    ]:
        run = client.create_run(exp_id, run_name=name, tags=tags)
        client.log_metric(run.info.run_id, "best_val_ndcg_at_10", value)
        if status == "FINISHED":
            client.set_terminated(run.info.run_id, status)
        ids[name] = run.info.run_id

    exp, runs = ranked_runs(client, "ctr-tests-runs", "val_ndcg_at_10")
    assert exp.experiment_id == exp_id
    assert [r.info.run_id for r in runs] == [ids["better"], ids["good"]]

    with pytest.raises(
        RunQueryError, match="no experiment named 'nope'; existing .*ctr-tests-runs"
    ):
        ranked_runs(client, "nope")
    only_sgd = "params.optimizer = 'sgd'"
    with pytest.raises(RunQueryError, match="no finished training runs matching .* to promote$"):
        ranked_runs(client, "ctr-tests-runs", filter_string=only_sgd, purpose=" to promote")
    with pytest.raises(RunQueryError, match="invalid --filter"):
        ranked_runs(client, "ctr-tests-runs", filter_string="params.x ==== 1")
    with pytest.raises(RunQueryError, match="no finished run has the metric 'test_auc'"):
        ranked_runs(client, "ctr-tests-runs", "test_auc")
