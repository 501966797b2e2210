"""Serving: the recommender pyfunc in-process, from the registry, and over HTTP.

The fast tests use an untrained tiny DeepFM on the real ml-100k encoders; the
slow ones use the session's tracked runs and a real `mlflow models serve`.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
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
    VENV_BIN,
    TrainedExperiment,
    free_port,
    stop_process,
    subprocess_env,
    tracking_env,
    wait_until_answers,
)

UNKNOWN_USER = 99_999
UNKNOWN_MOVIE = 99_999
README_SECTION = "## Serving"


# --------------------------------------------------------------------- helpers
def brute_force_top_k(
    score, item_ids: np.ndarray, seen: set[int], user_id: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Score every (user, item) pair in scores mode, drop `seen`, sort by (-score, id)."""
    frame = pd.DataFrame({"user_id": np.full(len(item_ids), user_id), "movie_id": item_ids})
    scores = score(frame)["score"].to_numpy()
    keep = ~np.isin(item_ids, sorted(seen))
    ids, kept = item_ids[keep], scores[keep]
    order = np.lexsort((ids, -kept))[:k]
    return ids[order], kept[order]


def seen_items(train: pd.DataFrame, user_id: int) -> set[int]:
    return set(train.loc[train["user_id"] == user_id, "movie_id"].tolist())


def check_top_k_against_brute_force(predict, item_ids, train, users, k) -> None:
    top = predict(pd.DataFrame({"user_id": users, "k": [k] * len(users)}))
    assert list(top.columns) == ["user_id", "rank", "movie_id", "title", "score"]
    for user in users:
        mine = top[top["user_id"] == user]
        assert mine["rank"].tolist() == list(range(1, k + 1))
        ids, scores = brute_force_top_k(predict, item_ids, seen_items(train, user), user, k)
        np.testing.assert_allclose(mine["score"].to_numpy(), scores, rtol=0, atol=1e-6)
        assert mine["movie_id"].tolist() == ids.tolist(), user


# ------------------------------------------------------------ fast: the core
@pytest.fixture(scope="module")
def tiny():
    """An untrained tiny DeepFM with the real encoders, tables and training split."""
    from ctr.config import load_config
    from ctr.models import create_model
    from ctr.training.trainer import build_data
    from experiments.serving import Recommender

    config = load_config(ROOT / "configs" / "deepfm_movielens.yaml", FAST_OVERRIDES)
    adapter, schema, *_ = build_data(config)
    torch.manual_seed(0)
    model = create_model(config.model_name, schema, config).eval()
    train = adapter.train_interactions[["user_id", "movie_id"]]
    recommender = Recommender(model, adapter.preprocessor, train)
    return SimpleNamespace(
        config=config,
        adapter=adapter,
        model=model,
        pre=adapter.preprocessor,
        train=train,
        rec=recommender,
        item_ids=adapter.preprocessor.item_ids,
    )


def test_training_interactions_are_the_adapters_training_split(tiny):
    from experiments.serving import training_interactions

    mine = training_interactions(tiny.config)
    pairs = set(zip(mine["user_id"], mine["movie_id"], strict=True))
    expected = set(zip(tiny.train["user_id"], tiny.train["movie_id"], strict=True))
    assert pairs == expected and len(mine) == len(tiny.train) == 98_114


def test_scores_equal_the_model_on_encoded_rows_unknown_ids_included(tiny):
    never_trained = tiny.item_ids[tiny.pre.catalogue_features()["movie_id"] == 0]
    assert len(never_trained) == 5  # in the catalogue, never in a training row
    rows = pd.DataFrame(
        {
            "user_id": [196, 196, 1, UNKNOWN_USER, 196, 1],
            "movie_id": [242, 302, 50, 50, UNKNOWN_MOVIE, never_trained[0]],
        }
    )
    batch = {k: torch.as_tensor(v) for k, v in tiny.pre.encode_frame(rows).items()}
    expected = tiny.model.predict(batch).squeeze(1).numpy()
    got = tiny.rec.predict(rows)
    assert list(got.columns) == ["score"] and len(got) == len(rows)
    np.testing.assert_allclose(got["score"].to_numpy(), expected, rtol=0, atol=1e-7)
    assert np.isfinite(got["score"]).all() and ((got["score"] > 0) & (got["score"] < 1)).all()
    assert batch["user_id"][3] == 0 and batch["movie_id"][4] == 0  # the OOV index


def test_top_k_equals_a_brute_force_sort_and_skips_training_items(tiny):
    check_top_k_against_brute_force(tiny.rec.predict, tiny.item_ids, tiny.train, [196, 1], 10)
    # an unknown user has no training items: all of the catalogue is rankable
    unknown = tiny.rec.predict(pd.DataFrame({"user_id": [UNKNOWN_USER], "k": [5]}))
    ids, _ = brute_force_top_k(tiny.rec.predict, tiny.item_ids, set(), UNKNOWN_USER, 5)
    assert unknown["movie_id"].tolist() == ids.tolist()


def test_exclude_seen_removes_exactly_the_training_items(tiny):
    everything = len(tiny.item_ids)
    seen = seen_items(tiny.train, 196)
    request = pd.DataFrame({"user_id": [196, 196], "k": [everything] * 2})
    request["exclude_seen"] = [True, False]
    top = tiny.rec.predict(request)
    excluded = top[: everything - len(seen)]
    assert set(excluded["movie_id"]) == set(tiny.item_ids) - seen
    assert excluded["user_id"].eq(196).all()
    assert len(top) == 2 * everything - len(seen)  # k beyond what is left: what is left
    # held-out (val / test) items are not "seen": they stay recommendable
    held_out = tiny.adapter.split_interactions("test")
    test_item = int(held_out.loc[held_out["user_id"] == 196, "movie_id"].iloc[0])
    assert test_item not in seen and test_item in set(excluded["movie_id"])
    scores = excluded["score"].to_numpy()
    assert (np.diff(scores) <= 0).all()


def test_side_features_are_used_for_unknown_ids_only(tiny):
    base = pd.DataFrame({"user_id": [196, UNKNOWN_USER], "movie_id": [242, 242]})
    side = base.assign(gender=["F", "F"], age=[23, 23], occupation=["artist"] * 2)
    side["zip_code"] = ["02139", "02139"]
    plain, with_side = tiny.rec.predict(base)["score"], tiny.rec.predict(side)["score"]
    assert with_side[0] == plain[0]  # known user: the bundled table wins
    assert with_side[1] != plain[1]  # unknown user: the caller's side features count
    expected_fields = tiny.pre.encode_frame(side.iloc[[1]])
    batch = {k: torch.as_tensor(v) for k, v in expected_fields.items()}
    assert with_side[1] == pytest.approx(float(tiny.model.predict(batch)), abs=1e-7)
    # genres for an unknown movie: a list or "A|B" alike
    movie = pd.DataFrame({"user_id": [196, 196], "movie_id": [UNKNOWN_MOVIE] * 2})
    movie["genres"] = [["Comedy", "Drama"], "Comedy|Drama"]
    genres_scores = tiny.rec.predict(movie)["score"]
    no_genres = tiny.rec.predict(movie.drop(columns="genres"))["score"]
    assert genres_scores[0] == genres_scores[1] != no_genres[0]
    # top-K for an unknown user with side features
    top = tiny.rec.predict(pd.DataFrame({"user_id": [UNKNOWN_USER], "k": [3], "gender": ["F"]}))
    assert len(top) == 3


@pytest.mark.parametrize(
    ("frame", "names"),
    [
        (pd.DataFrame({"movie_id": [1]}), "'user_id'"),
        (pd.DataFrame({"user_id": [1]}), "'movie_id'"),
        (pd.DataFrame({"user_id": ["abc"], "movie_id": [1]}), "'user_id'"),
        (pd.DataFrame({"user_id": [1.5], "movie_id": [1]}), "'user_id'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [None]}), "'movie_id'"),
        (pd.DataFrame({"user_id": [1], "k": [0]}), "'k'"),
        (pd.DataFrame({"user_id": [1], "k": ["ten"]}), "'k'"),
        (pd.DataFrame({"user_id": [1], "k": [3], "exclude_seen": ["no"]}), "'exclude_seen'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [1], "k": [3]}), "'movie_id'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [1], "age": ["old"]}), "'age'"),
        (pd.DataFrame({"user_id": [1], "movie_id": [1], "genres": [3]}), "'genres'"),
    ],
)
def test_bad_requests_raise_an_error_naming_the_column(tiny, frame, names):
    from experiments.serving import ServingInputError

    with pytest.raises(ServingInputError, match=names):
        tiny.rec.predict(frame)


def test_saved_artifacts_load_back_to_the_same_answers(tiny, tmp_path):
    from experiments.serving import Recommender

    paths = tiny.rec.save(tmp_path)
    loaded = Recommender.load(paths)
    rows = pd.DataFrame({"user_id": [196, 1, UNKNOWN_USER], "movie_id": [242, 50, 1]})
    pd.testing.assert_frame_equal(loaded.predict(rows), tiny.rec.predict(rows))
    request = pd.DataFrame({"user_id": [196, 5], "k": [7, 7]})
    pd.testing.assert_frame_equal(loaded.predict(request), tiny.rec.predict(request))


def test_a_forward_pass_leaves_torchs_thread_setting_alone(tiny):
    before = torch.get_num_threads()
    tiny.rec.predict(pd.DataFrame({"user_id": [196], "k": [3]}))
    assert torch.get_num_threads() == before


def test_empty_requests_give_empty_frames(tiny):
    scores = tiny.rec.predict(pd.DataFrame({"user_id": [], "movie_id": []}, dtype="int64"))
    top = tiny.rec.predict(pd.DataFrame({"user_id": [], "k": []}, dtype="int64"))
    assert len(scores) == 0 and list(scores.columns) == ["score"]
    assert len(top) == 0 and list(top.columns) == ["user_id", "rank", "movie_id", "title", "score"]


def test_recommendations_print_as_a_table():
    from experiments.serving import format_recommendations

    table = pd.DataFrame(
        {
            "user_id": [196, 196],
            "rank": [1, 2],
            "movie_id": [50, 181],
            "title": ["Star Wars (1977)", "Return of the Jedi (1983)"],
            "score": [0.91234, 0.5],
        }
    )
    text = format_recommendations(table, 196, "models:/x@champion").splitlines()
    assert text[0] == "top 2 movies for user 196 (models:/x@champion):"
    assert text[2].split() == ["1", "0.9123", "50", "Star", "Wars", "(1977)"]


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
    from experiments.serving import training_interactions

    exp = trained_experiment
    run_id = exp.runs["deepfm"]
    with tracking_env(exp.uri):
        recommender = mlflow.pyfunc.load_model(
            f"models:/{_logged_model_id(exp, run_id, 'recommender')}"
        )
        model = mlflow.pytorch.load_model(f"models:/{_logged_model_id(exp, run_id, 'model')}")
        encoders = mlflow.artifacts.load_dict(f"runs:/{run_id}/data/encoders.json")
    pre = MovieLensPreprocessor.from_dict(encoders)
    config = recommender.unwrap_python_model().recommender.model.config
    return SimpleNamespace(
        recommender=recommender,
        model=model,
        pre=pre,
        train=training_interactions(config),
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
def readme_serving_blocks(language: str) -> list[str]:
    """The code blocks of one language in the README's serving section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(README_SECTION) :]
    following = section.find("\n## ", len(README_SECTION))
    section = section if following < 0 else section[:following]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def readme_serving_commands() -> list[str]:
    """Shell commands of the README's serving section, without comments."""
    lines = []
    for block in readme_serving_blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


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
    commands = readme_serving_commands()
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
    port = free_port()
    argv = shlex.split(serve_cmd.replace("-p 5001", f"-p {port}"))
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(VENV_BIN / argv[0]), *argv[1:]],
            env=subprocess_env(exp.uri),
            cwd=tmp_path,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/ping", proc, log, timeout=150.0)

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
        lines = printed.output.strip().splitlines()
        assert lines[0].startswith("top 10 movies for user 196")
        assert [line.split(None, 3)[3] for line in lines[2:]] == top["title"].tolist()

        # the README's Python snippet, in-process
        (snippet,) = readme_serving_blocks("python")
        namespace: dict = {}
        with tracking_env(exp.uri):
            exec(compile(snippet, "README.md", "exec"), namespace)
        np.testing.assert_allclose(namespace["scores"]["score"], got[:2], rtol=0, atol=1e-6)
        assert namespace["top"]["title"].tolist() == top["title"].tolist()
    finally:
        stop_process(proc, grace=20.0, group=True)
    assert proc.returncode is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/ping", timeout=2)
