"""`ctr results` and `ctr evaluate`: the README table and checkpoint evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctr.errors import MissingFileError
from experiments.cli import main
from experiments.results import (
    END,
    START,
    ResultsError,
    format_table,
    merge_results,
    write_readme_table,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]

FAST = [
    "training.num_epochs=1",
    "training.full_ranking=false",
    "training.batch_size=4096",
    "features.embedding_dim=8",
    "fm.embed_dim=8",
]


def _run_results(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    """`ctr results` for LR, seeds 1 and 2, two workers, FAST overrides, into tmp_path:
    (the README it wrote, the per-seed JSON it saved)."""
    readme = tmp_path / "README.md"
    readme.write_text(f"# ctr\n\n{START}\n{END}\n")
    args = ["results", "--models", "lr", "--seeds", "1,2", "--jobs", "2", *extra]
    args += ["--readme", str(readme), "--output", str(tmp_path / "results.json")]
    for override in FAST:
        args += ["--override", override]
    out = CliRunner().invoke(main, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return readme, json.loads((tmp_path / "results.json").read_text())


def _fake_results():
    run = {
        "test_hr_at_10": 0.1,
        "test_ndcg_at_10": 0.05,
        "test_full_ndcg_at_10": 0.03,
        "test_auc": 0.9,
        "best_val_ndcg_at_10": 0.06,
        "best_epoch": 3,
        "seconds_per_epoch": 2.0,
    }
    return {
        "runs": {"fm": [run, {**run, "test_ndcg_at_10": 0.07}]},
        "popularity": {"test_hr_at_10": 0.067, "test_ndcg_at_10": 0.033, "test_auc": 0.75},
        "seeds": [1, 2],
    }


def test_table_has_mean_and_std_per_model_and_a_popularity_row():
    table = format_table(_fake_results())
    lines = table.splitlines()
    assert lines[0].startswith("| model | HR@10 | NDCG@10")
    pop = next(line for line in lines if line.startswith("| popularity"))
    assert "0.067" in pop and "0.0330" in pop
    fm = next(line for line in lines if line.startswith("| fm"))
    assert "0.0600 ± 0.0141" in fm  # mean and sample std of 0.05 and 0.07
    assert "Mean ± std over 2 seeds" in table


def test_readme_table_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{START}\nold table\n{END}\n\nafter\n")
    write_readme_table("new table", readme)
    text = readme.read_text()
    assert "old table" not in text and "new table" in text
    assert text.startswith("# x\n\nintro") and text.rstrip().endswith("after")
    write_readme_table("newer table", readme)
    assert readme.read_text().count(START) == 1


def test_results_rejects_an_unknown_model(tmp_path):
    out = CliRunner().invoke(main, ["results", "--models", "nope", "--readme", str(tmp_path)])
    assert out.exit_code != 0
    assert "unknown models ['nope']" in out.output and "deepfm" in out.output


def test_bad_input_is_refused_before_any_training(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# ctr\n\n{START}\n{END}\n")
    where = {"readme": readme, "output": tmp_path / "results.json", "track": False}
    with pytest.raises(ResultsError, match="--seeds: expected comma-separated integers, got '1,x'"):
        write_results("lr", "1,x", **where)
    with pytest.raises(ResultsError, match="--seeds: expected one or more integers >= 0"):
        write_results("lr", "-1", **where)
    with pytest.raises(ResultsError, match="--models: expected one or more model names, got none"):
        write_results(" , ", "1", **where)
    with pytest.raises(
        ResultsError, match="--models: unknown models \\['nope'\\]; known: .*deepfm"
    ):
        write_results("lr,nope", "1", **where)
    with pytest.raises(MissingFileError, match="README .* not found: .*nope.md; pass --readme"):
        write_results("lr", "1", **{**where, "readme": tmp_path / "nope.md"})
    assert not (tmp_path / "results.json").exists()


def test_from_json_needs_a_results_json(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# ctr\n")
    with pytest.raises(MissingFileError, match="results JSON not found"):
        write_results(from_json=tmp_path / "nope.json", readme=readme)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="runs, popularity and seeds .* got list"):
        write_results(from_json=tmp_path / "list.json", readme=readme)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ResultsError, match="is not JSON"):
        write_results(from_json=tmp_path / "broken.json", readme=readme)
    out = CliRunner().invoke(main, ["results", "--from-json", str(tmp_path / "broken.json")])
    assert out.exit_code == 1 and "is not JSON" in out.output and "Traceback" not in out.output
    assert readme.read_text() == "# ctr\n"


@pytest.mark.slow
def test_results_trains_each_seed_in_parallel_and_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme, saved = _run_results(tmp_path, "--no-track")
    assert [r["seed"] for r in saved["runs"]["lr"]] == [1, 2]
    assert saved["runs"]["lr"][0]["test_ndcg_at_10"] != saved["runs"]["lr"][1]["test_ndcg_at_10"]
    text = readme.read_text()
    assert "| lr |" in text and "| popularity |" in text


def test_merge_replaces_and_appends_model_rows_and_insists_on_the_same_seeds():
    old = _fake_results()
    old["runs"]["lr"] = [{"test_ndcg_at_10": 0.01}, {"test_ndcg_at_10": 0.02}]
    new = {"runs": {"fm": [{"test_ndcg_at_10": 0.09}] * 2, "deepfm": [{}] * 2}}
    new.update(popularity=old["popularity"], seeds=[1, 2])
    merged = merge_results(old, new)
    assert list(merged["runs"]) == ["fm", "lr", "deepfm"]  # order kept, new model appended
    assert merged["runs"]["fm"] == new["runs"]["fm"] and merged["runs"]["lr"] == old["runs"]["lr"]
    with pytest.raises(ValueError, match="same --seeds"):
        merge_results(old, {**new, "seeds": [1, 2, 3]})


def test_update_needs_saved_results_over_the_same_seeds(tmp_path):
    saved = tmp_path / "results.json"
    base = ["results", "--models", "lr", "--update", "--output", str(saved)]
    out = CliRunner().invoke(main, [*base, "--readme", str(tmp_path / "R.md")])
    assert out.exit_code != 0 and "does not exist" in out.output
    saved.write_text(json.dumps(_fake_results()))  # seeds 1, 2
    out = CliRunner().invoke(main, [*base, "--seeds", "1,2,3", "--readme", str(tmp_path / "R.md")])
    assert out.exit_code != 0 and "holds seeds [1, 2], not [1, 2, 3]" in out.output


@pytest.mark.slow
def test_update_retrains_only_the_given_models_and_keeps_the_other_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(_fake_results()))  # an fm row
    readme, saved = _run_results(tmp_path, "--no-track", "--update")
    assert saved["runs"]["fm"] == _fake_results()["runs"]["fm"]
    assert [r["seed"] for r in saved["runs"]["lr"]] == [1, 2]
    text = readme.read_text()
    assert "| fm |" in text and "| lr |" in text


@pytest.mark.slow
def test_evaluate_prints_the_checkpoint_metrics(tmp_path):
    from ctr.config import load_config
    from ctr.training import fit

    config = load_config(ROOT / "configs/fm_movielens.yaml", FAST)
    result = fit(config, checkpoint_dir=tmp_path / "ckpt")
    out = CliRunner().invoke(
        main, ["evaluate", "--checkpoint", str(tmp_path / "ckpt" / "best.pt"), "--split", "test"]
    )
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("test_ndcg_at_10 "))
    assert float(line.split()[-1]) == pytest.approx(result.summary["test_ndcg_at_10"], abs=1e-4)
    assert "test_full_ndcg_at_10" in out.output

    missing = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 1
    assert "checkpoint not found" in missing.output


def test_results_from_json_rerenders_the_table_without_training(tmp_path):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(_fake_results()))
    readme = tmp_path / "README.md"
    readme.write_text(f"# ctr\n\n{START}\n{END}\n")
    out = CliRunner().invoke(main, ["results", "--from-json", str(saved), "--readme", str(readme)])
    assert out.exit_code == 0, out.output
    assert "| fm | 0.100 ± 0.000 | 0.0600 ± 0.0141" in readme.read_text()


@pytest.mark.slow
def test_tracked_results_log_every_seed_as_a_finished_run(tmp_path, monkeypatch, tracking_uri):
    """`ctr results --track` (the default) on the session server, two worker processes."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    readme, saved = _run_results(tmp_path, "--track")

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("movielens-100k-results")
    assert experiment is not None
    runs = {
        r.info.run_name: r
        for r in client.search_runs([experiment.experiment_id])
        if r.info.run_name in ("lr-seed1", "lr-seed2")
    }
    assert set(runs) == {"lr-seed1", "lr-seed2"}
    for summary in saved["runs"]["lr"]:
        run = runs[f"lr-seed{summary['seed']}"]
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == str(summary["seed"])
        # the table is read back from the tracked run, so the two agree exactly
        assert run.data.metrics["test_ndcg_at_10"] == summary["test_ndcg_at_10"]
    assert "| lr |" in readme.read_text()
