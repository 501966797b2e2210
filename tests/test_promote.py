"""`ctr promote` against the real server's registry, on the session's trained runs."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

from experiments.cli import main
from tests.conftest import TrainedExperiment, tracking_env


def promote(exp: TrainedExperiment, *args: str):
    with tracking_env(exp.uri):
        return CliRunner().invoke(main, ["promote", "--experiment", exp.name, *args])


def versions(exp: TrainedExperiment, name: str) -> dict[str, str]:
    """version -> run id of every version of a registered model."""
    from mlflow import MlflowClient

    found = MlflowClient(exp.uri).search_model_versions(f"name = '{name}'")
    return {v.version: v.run_id for v in found}


def alias_version(exp: TrainedExperiment, name: str, alias: str) -> str | None:
    from mlflow import MlflowClient

    aliases = MlflowClient(exp.uri).get_registered_model(name).aliases
    return aliases.get(alias)


def ranked_runs(exp: TrainedExperiment) -> list[tuple[float, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(exp.uri)
    scored = [
        (client.get_run(rid).data.metrics["best_val_ndcg_at_10"], rid) for rid in exp.runs.values()
    ]
    return sorted(scored, reverse=True)


def test_promoting_on_a_test_metric_is_refused():
    result = CliRunner().invoke(main, ["promote", "--metric", "test_ndcg_at_10"])
    assert result.exit_code == 1
    assert "val_*" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_promote_refuses_worse_then_force_keeps_previous_and_never_duplicates(
    trained_experiment: TrainedExperiment,
):
    exp = trained_experiment
    name = "ctr-test-movielens"
    (best_value, best), *_, (worst_value, worst) = ranked_runs(exp)
    assert worst_value < best_value

    dry = promote(exp, "--model-name", name, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and best in dry.output
    assert versions(exp, name) == {}

    first = promote(exp, "--model-name", name)
    assert first.exit_code == 0, first.output
    assert first.output.strip().splitlines()[-1] == f"models:/{name}@champion"
    assert versions(exp, name) == {"1": best}
    assert alias_version(exp, name, "champion") == "1"

    again = promote(exp, "--model-name", name)
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert versions(exp, name) == {"1": best}

    only_worst = f"attributes.run_id = '{worst}'"
    refused = promote(exp, "--model-name", name, "--filter", only_worst)
    assert refused.exit_code == 1
    assert "refusing" in refused.output and "--force" in refused.output
    assert f"{best_value:.4f}" in refused.output and f"{worst_value:.4f}" in refused.output
    assert alias_version(exp, name, "champion") == "1"

    forced = promote(exp, "--model-name", name, "--filter", only_worst, "--force")
    assert forced.exit_code == 0, forced.output
    assert versions(exp, name) == {"1": best, "2": worst}
    assert alias_version(exp, name, "champion") == "2"
    assert alias_version(exp, name, "previous") == "1"

    back = promote(exp, "--model-name", name)
    assert back.exit_code == 0, back.output
    assert versions(exp, name) == {"1": best, "2": worst}  # version 1 reused
    assert alias_version(exp, name, "champion") == "1"
    assert alias_version(exp, name, "previous") == "2"


@pytest.mark.slow
def test_the_default_name_comes_from_the_runs_model(trained_experiment: TrainedExperiment):
    exp = trained_experiment
    result = promote(exp, "--filter", "params.model = 'fm'", "--alias", "staging")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "models:/fm-movielens@staging"
    assert versions(exp, "fm-movielens") == {"1": exp.runs["fm"]}


@pytest.mark.slow
def test_racing_promotes_end_with_one_consistent_champion(trained_experiment: TrainedExperiment):
    from experiments.promote import promote_best_run

    exp = trained_experiment
    (_, best), *_, (_, worst) = ranked_runs(exp)

    def race(name: str, calls: list[dict]) -> list[BaseException]:
        barrier = threading.Barrier(len(calls))
        errors: list[BaseException] = []

        def one(kwargs):
            barrier.wait()
            try:
                promote_best_run(exp.name, model_name=name, **kwargs)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        with tracking_env(exp.uri):
            threads = [threading.Thread(target=one, args=(kw,)) for kw in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
        return errors

    # the same best run promoted three times at once: one version, one champion
    same = "ctr-race-same-movielens"
    assert race(same, [{}, {}, {}]) == []
    assert versions(exp, same) == {"1": best}
    assert alias_version(exp, same, "champion") == "1"

    # two different runs forced at once: each run has one version, aliases are distinct
    mixed = "ctr-race-mixed-movielens"
    assert (
        race(mixed, [{}, {"filter_string": f"attributes.run_id = '{worst}'", "force": True}]) == []
    )
    found = versions(exp, mixed)
    assert sorted(found.values()) == sorted([best, worst])
    champion = alias_version(exp, mixed, "champion")
    assert champion in found
    previous = alias_version(exp, mixed, "previous")
    assert previous is None or previous != champion
