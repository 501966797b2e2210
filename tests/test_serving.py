"""Serving through MLflow: the recommender pyfunc in-process, from the registry, over HTTP.

The fast tests save an untrained tiny DeepFM's recommender as an MLflow model
directory and train one tiny epoch; the slow ones use the session's tracked
runs and a real `mlflow models serve`. The recommender itself (ctr.serving) is
tested in tests/test_recommender.py.
"""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import (
    FAST_OVERRIDES,
    ROOT,
    TrainedExperiment,
    subprocess_env,
    tracking_env,
)
from tests.readme_blocks import readme_blocks, readme_commands
from tests.servers import readme_server
from tests.test_recommender import (
    UNKNOWN_MOVIE,
    UNKNOWN_USER,
    check_top_k_against_brute_force,
    tiny_recommender,
)

README_SECTION = "## Serving"


def training_split() -> pd.DataFrame:
    """The training interactions (user_id, movie_id) of the data files, derived here
    independently of the adapter: every rating but each user's last two by time."""
    from ctr.data.movielens import leave_one_out_split, read_movielens

    ratings = leave_one_out_split(read_movielens(ROOT / "data" / "ml-100k").ratings)
    train = ratings[ratings["split"] == "train"]
    return train[["user_id", "movie_id"]].reset_index(drop=True)


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user_id"].tolist(), frame["movie_id"].tolist(), strict=True))


# ------------------------------------------------------------ fast: the wrapper
@pytest.fixture(scope="module")
def tiny() -> SimpleNamespace:
    return tiny_recommender()


def test_fit_carries_the_adapters_training_split_to_the_loggers(tmp_path):
    from ctr.config import load_config
    from ctr.training import Callback, fit

    seen = {}

    class Recording(Callback):
        def on_train_begin(self, context):
            seen["context"] = context.train_interactions

    config = load_config(ROOT / "configs" / "lr_movielens.yaml", FAST_OVERRIDES)
    result = fit(config, callbacks=[Recording()], checkpoint_dir=tmp_path)
    expected = pairs(training_split())
    assert len(expected) == 98_114
    assert pairs(seen["context"]) == pairs(result.train_interactions) == expected
    assert len(result.train_interactions) == len(expected)


def test_saved_pyfunc_model_answers_like_the_recommender(tiny, tmp_path):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from experiments.serving import save_recommender

    path = save_recommender(tmp_path / "recommender", tiny.model, tiny.pre, tiny.train)
    model = mlflow.pyfunc.load_model(path)
    assert pairs(model.unwrap_python_model().recommender.train_items) == pairs(tiny.train)
    rows = pd.DataFrame({"user_id": [196, 1, UNKNOWN_USER], "movie_id": [242, 50, 1]})
    pd.testing.assert_frame_equal(model.predict(rows), tiny.rec.predict(rows))
    request = pd.DataFrame({"user_id": [196, UNKNOWN_USER], "k": [5, 3]})
    pd.testing.assert_frame_equal(model.predict(request), tiny.rec.predict(request))
    with pytest.raises(MlflowException, match="'k'") as info:
        model.predict(pd.DataFrame({"user_id": [196], "k": [0]}))
    assert info.value.get_http_status_code() == 400


def test_log_recommender_needs_the_training_interactions(tiny):
    from ctr.training import TrainResult
    from experiments.serving import log_recommender

    result = TrainResult(
        model=tiny.model,
        schema=tiny.model.schema,
        config=tiny.config,
        summary={},
        history=[],
        preprocessor=tiny.pre,
    )
    with pytest.raises(ValueError, match="training interactions"):
        log_recommender("run-1", result)


# ------------------------------------------------- slow: the session's runs
def _logged_model_id(exp: TrainedExperiment, run_id: str, name: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(exp.uri)
    run = client.get_run(run_id)
    (logged,) = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    return logged.model_id


@pytest.fixture(scope="module")
def logged(trained_experiment: TrainedExperiment):
    """The deepfm run's recommender (pyfunc) and PyTorch model, loaded in-process."""
    import mlflow
    import mlflow.pytorch

    from ctr.data import MovieLensPreprocessor

    exp = trained_experiment
    run_id = exp.runs["deepfm"]
    with tracking_env(exp.uri):
        recommender = mlflow.pyfunc.load_model(
            f"models:/{_logged_model_id(exp, run_id, 'recommender')}"
        )
        model = mlflow.pytorch.load_model(f"models:/{_logged_model_id(exp, run_id, 'model')}")
        encoders = mlflow.artifacts.load_dict(f"runs:/{run_id}/data/encoders.json")
    pre = MovieLensPreprocessor.from_dict(encoders)
    return SimpleNamespace(
        recommender=recommender,
        model=model,
        pre=pre,
        train=training_split(),
        item_ids=pre.item_ids,
    )


@pytest.mark.slow
def test_every_tracked_run_logs_a_recommender_beside_the_model(
    trained_experiment: TrainedExperiment,
):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    client = MlflowClient(trained_experiment.uri)
    for label, run_id in trained_experiment.runs.items():
        run = client.get_run(run_id)
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        assert sorted(m.name for m in models) == ["model", "recommender"], label
    model_id = _logged_model_id(
        trained_experiment, trained_experiment.runs["xdeepfm"], "recommender"
    )
    assert client.get_logged_model(model_id).status == LoggedModelStatus.READY
    with tracking_env(trained_experiment.uri):
        signature = mlflow.models.get_model_info(f"models:/{model_id}").signature
    assert signature.inputs.required_input_names() == ["user_id"]
    assert {"movie_id", "k", "exclude_seen", "genres"} <= set(signature.inputs.input_names())


@pytest.mark.slow
def test_logged_recommender_scores_like_the_logged_pytorch_model(logged):
    rows = pd.DataFrame(
        {
            "user_id": [196, 196, 1, UNKNOWN_USER, 196, 405],
            "movie_id": [242, 302, 50, 50, UNKNOWN_MOVIE, 1],
        }
    )
    batch = {k: torch.as_tensor(v) for k, v in logged.pre.encode_frame(rows).items()}
    expected = logged.model.predict(batch).squeeze(1).numpy()
    got = logged.recommender.predict(rows)["score"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert type(logged.model).__name__ == "DeepFM"


@pytest.mark.slow
def test_logged_recommender_top_k_equals_a_brute_force_sort(logged):
    # the run carried its training split into the logged model: top-K skips exactly it
    bundled = logged.recommender.unwrap_python_model().recommender.train_items
    assert pairs(bundled) == pairs(logged.train) and len(bundled) == len(logged.train)
    predict = logged.recommender.predict
    check_top_k_against_brute_force(predict, logged.item_ids, logged.train, [196, 405], 10)


@pytest.mark.slow
def test_logged_recommender_rejects_bad_input_with_a_400_error(logged):
    from mlflow.exceptions import MlflowException

    for frame, column in [
        (pd.DataFrame({"movie_id": [242]}), "user_id"),
        (pd.DataFrame({"user_id": [196]}), "movie_id"),
        (pd.DataFrame({"user_id": ["abc"], "movie_id": [242]}), "user_id"),
        (pd.DataFrame({"user_id": [196], "k": [0]}), "'k'"),
    ]:
        with pytest.raises(MlflowException, match=column) as info:
            logged.recommender.predict(frame)
        assert info.value.get_http_status_code() == 400


@pytest.mark.slow
def test_promote_moves_the_recommender_alias_with_the_model(trained_experiment: TrainedExperiment):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    exp = trained_experiment
    client = MlflowClient(exp.uri)
    name, serving = "ctr-serving-movielens", "ctr-serving-movielens-recommender"
    lr, fm = exp.runs["lr"], exp.runs["fm"]

    def promote(run_id: str, *extra: str):
        args = ["promote", "--experiment", exp.name, "--model-name", name]
        args += ["--filter", f"attributes.run_id = '{run_id}'", *extra]
        with tracking_env(exp.uri):
            result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return result.output

    def holders(model: str) -> dict[str, str]:
        aliases = client.get_registered_model(model).aliases
        return {a: client.get_model_version(model, v).run_id for a, v in aliases.items()}

    out = promote(lr)
    assert f"{serving} version 1 is @champion" in out
    assert f"models:/{serving}@champion" in out  # the serve command
    promote(fm, "--force")
    assert holders(name) == holders(serving) == {"champion": fm, "previous": lr}
    assert "nothing to do" in promote(fm)
    versions = client.search_model_versions(f"name = '{serving}'")
    assert sorted(v.run_id for v in versions) == sorted([lr, fm])


# --------------------------------------------------- slow: a real model server
def http_post(url: str, payload: bytes | str | dict) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def curl_request(command: str, port: int) -> tuple[str, str]:
    """(url, body) of a README `curl ... URL ... -d BODY` line, on our port."""
    argv = shlex.split(command)
    assert argv[0] == "curl" and "-d" in argv, command
    (url,) = [a for a in argv if a.startswith("http://")]
    return url.replace(":5001", f":{port}"), argv[argv.index("-d") + 1]


@pytest.mark.slow
def test_registered_recommender_answers_over_http_as_the_readme_says(
    trained_experiment: TrainedExperiment, tmp_path
):
    import mlflow
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from experiments.cli import main

    exp = trained_experiment
    commands = readme_commands(README_SECTION)
    (promote_cmd,) = [c for c in commands if c.startswith("ctr promote")]
    (serve_cmd,) = [c for c in commands if c.startswith("mlflow models serve")]
    curls = [c for c in commands if c.startswith("curl")]
    (recommend_cmd,) = [c for c in commands if c.startswith("ctr recommend")]
    assert len(curls) == 2

    # promote: the PyTorch model and the recommender, same run, same alias
    argv = shlex.split(promote_cmd)[1:]
    argv[argv.index("--experiment") + 1] = exp.name
    with tracking_env(exp.uri):
        result = CliRunner().invoke(main, [*argv, "--filter", "params.model = 'deepfm'"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "models:/deepfm-movielens@champion"
    client = MlflowClient(exp.uri)
    champion = client.get_model_version_by_alias("deepfm-movielens-recommender", "champion")
    assert champion.run_id == exp.runs["deepfm"]
    assert serve_cmd.split(" -m ")[1].startswith("models:/deepfm-movielens-recommender@champion")
    with tracking_env(exp.uri):
        in_process = mlflow.pyfunc.load_model("models:/deepfm-movielens-recommender@champion")

    # serve it, exactly as written but on a free port
    with readme_server(
        serve_cmd,
        "-p 5001",
        "/ping",
        tmp_path / "serve.log",
        env=subprocess_env(exp.uri),
        cwd=tmp_path,
        timeout=150.0,
        group=True,  # its own process group: uvicorn's workers are stopped with it
    ) as server:
        url, port = server.url, server.port

        # the README's requests: scores (dataframe_split) and top-K (dataframe_records)
        url_split, body_split = curl_request(curls[0], port)
        status, answer = http_post(url_split, body_split)
        assert status == 200, answer
        request = json.loads(body_split)["dataframe_split"]
        frame = pd.DataFrame(request["data"], columns=request["columns"])
        expected = in_process.predict(frame)["score"].to_numpy()
        got = [row["score"] for row in answer["predictions"]]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)

        url_records, body_records = curl_request(curls[1], port)
        status, answer = http_post(url_records, body_records)
        assert status == 200, answer
        top = pd.DataFrame(answer["predictions"])
        expected_top = in_process.predict(
            pd.DataFrame(json.loads(body_records)["dataframe_records"])
        )
        assert top["movie_id"].tolist() == expected_top["movie_id"].tolist()
        assert top["title"].tolist() == expected_top["title"].tolist()
        np.testing.assert_allclose(top["score"], expected_top["score"], rtol=0, atol=1e-6)

        # the other format of each mode gives the same answers
        status, records = http_post(
            f"{url}/invocations", {"dataframe_records": frame.to_dict("records")}
        )
        assert status == 200 and [r["score"] for r in records["predictions"]] == got
        split = {"columns": ["user_id", "k"], "data": [[196, 10], [UNKNOWN_USER, 3]]}
        status, answer = http_post(f"{url}/invocations", {"dataframe_split": split})
        assert status == 200, answer
        both = pd.DataFrame(answer["predictions"])
        assert both.groupby("user_id").size().to_dict() == {196: 10, UNKNOWN_USER: 3}
        assert both[both["user_id"] == 196]["movie_id"].tolist() == top["movie_id"].tolist()

        # malformed requests: 400 naming the column, and the server keeps answering
        bad = [
            ({"dataframe_records": [{"movie_id": 242}]}, "user_id"),
            ({"dataframe_records": [{"user_id": 196}]}, "movie_id"),
            ({"dataframe_records": [{"user_id": "abc", "movie_id": 242}]}, "user_id"),
            ({"dataframe_split": {"columns": ["user_id", "k"], "data": [[196, "ten"]]}}, "k"),
            ({"dataframe_records": [{"user_id": 196, "k": 0}]}, "'k'"),
        ]
        for payload, column in bad:
            status, answer = http_post(f"{url}/invocations", payload)
            assert status == 400, (payload, answer)
            assert column in answer["message"], (payload, answer["message"][-500:])
        status, again = http_post(url_split, body_split)
        assert status == 200 and [r["score"] for r in again["predictions"]] == got

        # `ctr recommend` prints the same top-K
        with tracking_env(exp.uri):
            printed = CliRunner().invoke(main, shlex.split(recommend_cmd)[1:])
        assert printed.exit_code == 0, printed.output
        # MLflow may draw a download bar (stderr, no newline) before the table: skip it
        header = "top 10 movies for user 196"
        assert header in printed.output, printed.output[-2000:]
        lines = printed.output[printed.output.index(header) :].strip().splitlines()
        assert [line.split(None, 3)[3] for line in lines[2:]] == top["title"].tolist()

        # the README's Python snippet, in-process
        (snippet,) = readme_blocks(README_SECTION, "python")
        namespace: dict = {}
        with tracking_env(exp.uri):
            exec(compile(snippet, "README.md", "exec"), namespace)
        np.testing.assert_allclose(namespace["scores"]["score"], got[:2], rtol=0, atol=1e-6)
        assert namespace["top"]["title"].tolist() == top["title"].tolist()
    assert server.proc.returncode is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/ping", timeout=2)
