"""`ctr compare` on the runs trained once per session against the real server."""

from __future__ import annotations

import csv
import io
import json
import statistics
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from experiments.cli import main
from experiments.cli_compare import COMPARE_LIMIT
from experiments.compare import LAUNCHER_PARAMS, compare_url, differing_params, param_name
from tests.conftest import ROOT, TrainedExperiment, tracking_env


def test_compare_url_only_for_servers():
    url = compare_url("http://127.0.0.1:5000/", "3", ["a1", "b2"])
    assert url == 'http://127.0.0.1:5000/#/compare-runs?runs=["a1","b2"]&experiments=["3"]'
    assert compare_url("sqlite:///mlflow.db", "3", ["a1"]) is None


def test_param_names():
    assert param_name("params.model") == "model" and param_name("seed") == "seed"


def _run(**params):
    return SimpleNamespace(data=SimpleNamespace(params=params))


def test_diff_only_ignores_the_launcher_params_of_mlflow_run():
    # differing_params reads only run.data.params, so plain namespaces stand in for runs
    by_ctr_train = _run(**{"model": "deepfm", "training.num_epochs": "5", "seed": "1"})
    by_mlflow_run = _run(
        **{"model": "deepfm", "training.num_epochs": "5", "seed": "2"},
        config="",
        epochs="5",
        batch_size="",
        learning_rate="",
        overrides="",
    )
    assert differing_params([by_ctr_train, by_mlflow_run]) == ["seed"]
    # the list is what MLproject's main entry point passes on to `ctr train` as --NAME
    # when given with -P NAME=... (only `model`, logged by every run, is declared)
    from experiments.cli import train

    project_text = (ROOT / "MLproject").read_text()
    project = yaml.safe_load(project_text)
    assert set(project["entry_points"]["main"]["parameters"]) == {"model"}
    train_options = {opt for param in train.params for opt in param.opts}
    for name in LAUNCHER_PARAMS:
        assert f"--{name}" in train_options and f"-P {name}=" in project_text, name


@pytest.fixture(scope="module")
def exp(trained_experiment: TrainedExperiment):
    return trained_experiment


@pytest.fixture(scope="module")
def run_metrics(exp: TrainedExperiment) -> dict[str, dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(exp.uri)
    return {rid: client.get_run(rid).data.metrics for rid in exp.runs.values()}


def invoke(exp: TrainedExperiment, *args: str):
    with tracking_env(exp.uri):
        return CliRunner().invoke(main, ["compare", "--experiment", exp.name, *args])


@pytest.mark.slow
def test_table_lists_every_finished_run_best_first_with_the_ui_link(exp, run_metrics):
    result = invoke(exp)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "sorted by val_ndcg_at_10 (higher is better)" in lines[0]
    header = lines[1].split()
    for column in ("run_id", "run_name", "model", "seed", "best_epoch", "val_ndcg_at_10"):
        assert column in header
    assert "test_ndcg_at_10" in header and "training.learning_rate" in header
    body = [line.split()[0] for line in lines[3 : 3 + len(exp.runs)]]
    assert sorted(body) == sorted(exp.runs.values())
    values = [run_metrics[rid]["best_val_ndcg_at_10"] for rid in body]
    assert values == sorted(values, reverse=True)
    (url_line,) = [line for line in lines if line.startswith("compare in the MLflow UI: ")]
    url = url_line.split(": ", 1)[1]
    assert url.startswith(f"{exp.uri}/#/compare-runs?runs=[")
    assert all(rid in url for rid in exp.runs.values())


@pytest.mark.slow
def test_csv_and_json_carry_every_metric_and_agree(exp, run_metrics):
    csv_out = invoke(exp, "--format", "csv")
    assert csv_out.exit_code == 0, csv_out.output
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert len(rows) == len(exp.runs)
    for row in rows:
        metrics = run_metrics[row["run_id"]]
        assert float(row["val_ndcg_at_10"]) == pytest.approx(metrics["best_val_ndcg_at_10"])
        assert float(row["test_hr_at_20"]) == pytest.approx(metrics["test_hr_at_20"])
    json_out = invoke(exp, "--format", "json", "--metric", "val_logloss", "--top", "3")
    assert json_out.exit_code == 0, json_out.output
    data = json.loads(json_out.stdout)
    assert len(data) == 3
    losses = [r["val_logloss"] for r in data]
    assert losses == sorted(losses)  # lower is better
    assert min(m["best_val_logloss"] for m in run_metrics.values()) == pytest.approx(losses[0])


@pytest.mark.slow
def test_filter_and_diff_only_show_the_params_that_differ(exp):
    result = invoke(exp, "--filter", "params.model = 'lr'", "--diff-only", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["run_id"] for r in rows} == {exp.runs["lr"], exp.runs["lr_seed7"]}
    assert {r["seed"] for r in rows} == {"42", "7"}
    assert "training.learning_rate" not in rows[0]  # the same in both runs
    everything = json.loads(invoke(exp, "--diff-only", "--format", "json").stdout)
    assert "model_name" in everything[0] and "num_params" in everything[0]
    assert "training.learning_rate" not in everything[0]


@pytest.mark.slow
def test_group_by_model_gives_mean_std_and_run_count(exp, run_metrics):
    result = invoke(exp, "--group-by", "params.model", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"lr", "fm", "deepfm", "xdeepfm", "attention_deepfm"}
    lr = rows["lr"]
    assert lr["runs"] == 2 and lr["seeds"] == "42,7" and lr["also_differ"] == ""
    values = [run_metrics[exp.runs[k]]["best_val_ndcg_at_10"] for k in ("lr", "lr_seed7")]
    assert lr["val_ndcg_at_10_mean"] == pytest.approx(statistics.fmean(values))
    assert lr["val_ndcg_at_10_std"] == pytest.approx(statistics.stdev(values))
    assert rows["fm"]["runs"] == 1 and rows["fm"]["val_ndcg_at_10_std"] is None
    table = invoke(exp, "--group-by", "model")
    assert table.exit_code == 0
    assert "grouped by model" in table.output and "±" in table.output


@pytest.mark.slow
def test_plot_writes_one_png_of_the_per_epoch_curves(exp, tmp_path):
    import matplotlib.image

    path = tmp_path / "curves.png"
    result = invoke(exp, "--plot", str(path), "--top", "4")
    assert result.exit_code == 0, result.output
    assert f"plot: {path}" in result.output
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.slow
def test_unknown_experiment_metric_or_filter_is_a_clear_error(exp):
    result = invoke(exp, "--metric", "val_ndcg@10")
    assert result.exit_code == 1
    assert "val_ndcg@10" in result.output and "val_ndcg_at_10" in result.output
    assert "Traceback" not in result.output
    with tracking_env(exp.uri):
        missing = CliRunner().invoke(main, ["compare", "--experiment", "no-such-experiment"])
    assert missing.exit_code == 1
    assert "no-such-experiment" in missing.output and exp.name in missing.output
    bad_filter = invoke(exp, "--filter", "params.model ==== 'x'")
    assert bad_filter.exit_code == 1 and "invalid --filter" in bad_filter.output


# ------------------------------------------- many runs: the default limit and --all
MANY = COMPARE_LIMIT + 3  # runs in the experiment below: more than compare lists by default


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory) -> tuple[str, dict[str, float]]:
    """An experiment of MANY finished runs on a real SQLite store (logged directly: no
    training behind them), each with its own seed and best_val_ndcg_at_10."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    uri = f"sqlite:///{tmp_path_factory.mktemp('many') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("many")
    values = {}
    for i in range(MANY):
        run = client.create_run(experiment_id, start_time=i, run_name=f"run-{i}")
        value = 0.01 * ((i * 7) % MANY)  # distinct, not in start order
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("best_val_ndcg_at_10", value, i, 1)],
            params=[Param("model", "lr"), Param("seed", str(i))],
            tags=[RunTag("model", "lr")],
        )
        client.set_terminated(run.info.run_id, "FINISHED", end_time=i + 1)
        values[run.info.run_id] = value
    return uri, values


def _compare_many(uri: str, *args: str):
    with tracking_env(uri):
        return CliRunner().invoke(main, ["compare", "--experiment", "many", *args])


def test_compare_lists_the_best_runs_by_default_and_says_there_are_more(many_runs):
    uri, values = many_runs
    best_first = sorted(values, key=values.get, reverse=True)
    table = _compare_many(uri)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert [line.split()[0] for line in lines[3 : 3 + COMPARE_LIMIT + 1]] == [
        *best_first[:COMPARE_LIMIT],
        "(the",  # the note follows the last row
    ]
    assert f"the best {COMPARE_LIMIT} runs" in table.stdout and "--all" in table.stdout
    rows = json.loads(_compare_many(uri, "--format", "json").stdout)  # the note: on stderr
    assert [r["run_id"] for r in rows] == best_first[:COMPARE_LIMIT]
    grouped = json.loads(_compare_many(uri, "--group-by", "seed", "--format", "json").stdout)
    assert len(grouped) == COMPARE_LIMIT  # one group per seed, the best first


def test_compare_all_lists_every_run_and_top_any_number(many_runs):
    uri, values = many_runs
    best_first = sorted(values, key=values.get, reverse=True)
    every = _compare_many(uri, "--all", "--format", "json")
    assert every.exit_code == 0 and "--all" not in every.stderr
    assert [r["run_id"] for r in json.loads(every.stdout)] == best_first
    table = _compare_many(uri, "--all")
    assert sum(rid in table.stdout for rid in values) == MANY and "(the best" not in table.stdout
    top = _compare_many(uri, "--top", "3")
    assert [line.split()[0] for line in top.stdout.splitlines()[3:6]] == best_first[:3]
    assert "(the best" not in top.stdout  # asked for 3: no note
    both = _compare_many(uri, "--top", "3", "--all")
    assert both.exit_code == 2 and "--top N or --all" in both.output
