"""experiments.runs.top_runs: the best runs fetched alone (sorted by the store) are
the head of the full ranking, on a real SQLite store."""

from __future__ import annotations

import pytest

from experiments.runs import ranked_runs, top_runs

# name: (start time, tags, metrics, status); the val metric of a run is its
# best_val_* when it has one (metric_value), else the val_* it logged
RUNS = {
    "a": (10, {"model": "lr"}, {"best_val_ndcg_at_10": 0.30, "val_ndcg_at_10": 0.25}, "FINISHED"),
    "b": (20, {"model": "lr"}, {"best_val_ndcg_at_10": 0.20, "val_ndcg_at_10": 0.20}, "FINISHED"),
    "no_best": (30, {"model": "fm"}, {"val_ndcg_at_10": 0.28}, "FINISHED"),  # ranks by val_*
    "early_tie": (5, {"model": "fm"}, {"best_val_ndcg_at_10": 0.28}, "FINISHED"),
    "not_ctr": (40, {}, {"best_val_ndcg_at_10": 0.90}, "FINISHED"),  # no model tag
    "running": (50, {"model": "lr"}, {"best_val_ndcg_at_10": 0.95}, "RUNNING"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('top') / 'mlflow.db'}")
    experiment_id = client.create_experiment("top")
    for name, (start, tags, metrics, status) in RUNS.items():
        run = client.create_run(experiment_id, start_time=start, run_name=name)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, start, 1) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        if status == "FINISHED":
            client.set_terminated(run.info.run_id, status, end_time=start + 1)
    return client, experiment_id


def _names(runs) -> list[str]:
    return [r.info.run_name for r in runs]


def test_top_runs_are_the_head_of_the_full_ranking(store):
    client, experiment_id = store
    _, full = ranked_runs(client, "top", "val_ndcg_at_10")
    assert _names(full)[:4] == ["a", "early_tie", "no_best", "b"]  # ties: the earlier first
    for k in (1, 2, 3):  # k=3: "no_best" (no best_val_*) overtakes "b"
        fetched = top_runs(client, experiment_id, "val_ndcg_at_10", None, k)
        assert fetched is not None and _names(fetched) == _names(full)[:k], k
    # fewer runs with best_val_* than asked: ranked_runs ranks every run instead
    assert top_runs(client, experiment_id, "val_ndcg_at_10", None, 4) is None
    for k in (1, 4, 9):
        assert _names(ranked_runs(client, "top", "val_ndcg_at_10", top=k)[1]) == _names(full)[:k]


def test_top_runs_follow_the_filter_and_the_direction(store):
    client, experiment_id = store
    only_fm = "tags.model = 'fm'"
    fetched = top_runs(client, experiment_id, "val_ndcg_at_10", only_fm, 1)
    assert _names(fetched) == ["early_tie"]  # ties with "no_best", started earlier
    lowest = top_runs(client, experiment_id, "val_logloss", None, 1)
    assert lowest is None  # no run has it: ranked_runs then says which metrics exist
    _, best = ranked_runs(client, "top", "best_val_ndcg_at_10", top=1)
    assert _names(best) == ["a"]  # not "not_ctr" (no model tag) nor "running"
