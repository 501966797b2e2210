"""What `ctr train` tells the user: the closing summary, the progress bar, a
clean stderr (no pickle warnings), and the params a run logs."""

from __future__ import annotations

import logging
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch

from ctr.config import build_config
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models import MODEL_REGISTRY, create_model
from ctr.training.progress import _Progress
from experiments.tracking import (
    cpu_model,
    run_params,
    silence_pickle_warnings,
    unused_config_sections,
)
from experiments.train import RunLocation, format_summary
from tests.conftest import FAST_OVERRIDES, VENV_BIN, subprocess_env

METRICS = {
    "best_val_hr_at_10": 0.6543,
    "best_val_ndcg_at_10": 0.3812,
    "best_val_full_ndcg_at_10": 0.0812,
    "best_val_auc": 0.9123,
    "test_hr_at_10": 0.6231,
    "test_ndcg_at_10": 0.364,
    "test_auc": 0.9087,  # no test_full_*: test full ranking was off
}


# ------------------------------------------------------------------ the summary
def test_summary_of_a_run_on_the_embedded_default():
    run = RunLocation("sqlite:////home/me/work/mlflow.db", "1", "movielens-100k", "abc123")
    text = format_summary(
        METRICS,
        model="deepfm",
        monitor="val_ndcg_at_10",
        best_epoch=7,
        epochs_run=17,
        stopped_early=True,
        run=run,
        checkpoint="checkpoints/abc123/best.pt",
    )
    lines = text.splitlines()
    assert lines[0] == "deepfm: best epoch 7 of 17 (stopped early), chosen on val_ndcg_at_10"
    assert lines[2].split() == ["HR@10", "NDCG@10", "full", "NDCG@10", "AUC"]
    assert lines[3].split() == ["validation", "0.6543", "0.3812", "0.0812", "0.9123"]
    assert lines[4].split() == ["test", "0.6231", "0.3640", "-", "0.9087"]
    # the table's columns line up under their titles
    assert {len(line) for line in lines[2:5]} == {len(lines[2])}
    assert "run abc123 in experiment movielens-100k" in text
    assert "tracking URI: sqlite:////home/me/work/mlflow.db" in text
    assert "best checkpoint: checkpoints/abc123/best.pt" in text
    assert "mlflow ui --backend-store-uri sqlite:////home/me/work/mlflow.db" in text
    assert "ctr compare --experiment movielens-100k" in text
    assert "ctr promote --experiment movielens-100k" in text
    assert "/#/experiments/" not in text  # no UI link without a server


def test_summary_of_a_run_on_a_server_links_the_run_page():
    run = RunLocation("http://127.0.0.1:5000/", "3", "my runs", "abc123")
    assert run.ui_url() == "http://127.0.0.1:5000/#/experiments/3/runs/abc123"
    text = format_summary(
        METRICS, model="fm", monitor="val_ndcg_at_10", best_epoch=2, epochs_run=2, run=run
    )
    assert "in the UI: http://127.0.0.1:5000/#/experiments/3/runs/abc123" in text
    assert "mlflow ui" not in text  # the server is the UI
    assert "ctr compare --experiment 'my runs'" in text  # quoted for the shell
    assert "ctr promote --experiment 'my runs'" in text
    assert "(stopped early)" not in text


def test_summary_of_an_untracked_run_gives_the_checkpoint():
    text = format_summary(
        METRICS,
        model="lr",
        monitor="val_ndcg_at_10",
        best_epoch=1,
        epochs_run=1,
        checkpoint="checkpoints/lr-x/best.pt",
    )
    assert "validation" in text and "0.6543" in text
    assert "not tracked; best checkpoint: checkpoints/lr-x/best.pt" in text
    assert "ctr evaluate --checkpoint checkpoints/lr-x/best.pt" in text
    assert "ctr compare" not in text and "tracking URI" not in text


# ----------------------------------------------------------------- the warnings
def test_only_the_pickle_warnings_are_silenced_and_only_inside_the_block(caplog):
    pytorch_log, pyfunc_log = (
        logging.getLogger("mlflow.pytorch"),
        logging.getLogger("mlflow.pyfunc"),
    )
    pickle_text = (
        "Saving pytorch model by Pickle or CloudPickle format requires exercising caution "
        "because ..."
    )
    cloudpickle_text = (
        "Passing a Python object as `python_model` causes it to be serialized using "
        "CloudPickle, it requires exercising caution ..."
    )
    with caplog.at_level(logging.WARNING):
        with silence_pickle_warnings():
            pytorch_log.warning(pickle_text)
            pyfunc_log.warning(cloudpickle_text)
            pytorch_log.warning("another warning of mlflow.pytorch")
        pytorch_log.warning(pickle_text)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another warning of mlflow.pytorch", pickle_text]


# ------------------------------------------------------------- the progress bar
def test_progress_bar_only_on_a_terminal_unless_forced(monkeypatch, capsys):
    monkeypatch.delenv("CTR_PROGRESS", raising=False)
    assert not _Progress.enabled()  # pytest's captured stderr is no terminal
    monkeypatch.setenv("CTR_PROGRESS", "1")
    assert _Progress.enabled()
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    monkeypatch.setenv("CTR_PROGRESS", "0")
    assert not _Progress.enabled()
    monkeypatch.delenv("CTR_PROGRESS")
    assert _Progress.enabled()

    capsys.readouterr()
    progress = _Progress(total_rows=4096, epoch=2, num_epochs=5)
    for _ in range(3):
        progress.update(1024, torch.tensor(2.0), 4)  # running loss 0.5
        time.sleep(1.2 * _Progress.MININTERVAL)  # redrawn at most every MININTERVAL
    progress.close()
    err = capsys.readouterr().err
    assert "epoch 2/5" in err and "row/s" in err and "loss=0.5000" in err


def test_progress_bar_adds_no_measurable_cost_per_batch(monkeypatch, capsys):
    """A batch of a real epoch takes milliseconds; an update must stay far below."""
    progress = _Progress(total_rows=10**9, epoch=1, num_epochs=1)
    loss_sum = torch.tensor(1.0)
    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        progress.update(1024, loss_sum, i + 1)
    per_update = (time.perf_counter() - t0) / n
    progress.close()
    capsys.readouterr()
    assert per_update < 50e-6, f"{per_update * 1e6:.1f} us per update"


# ------------------------------------------------------------ the logged params
def _context(*overrides: str, model: str = "deepfm"):
    config = build_config({}, [f"model_name={model}", *overrides])
    return SimpleNamespace(config=config, num_params=123)


@pytest.mark.parametrize(
    ("model", "absent", "present"),
    [
        ("deepfm", {"cin", "attention"}, {"fm", "dnn"}),
        ("xdeepfm", {"attention"}, {"fm", "cin", "dnn"}),
        ("attention_deepfm", {"cin"}, {"fm", "attention", "dnn"}),
        ("fm", {"cin", "attention", "dnn"}, {"fm"}),
        ("lr", {"cin", "attention", "dnn", "fm"}, set()),
        ("sasrec", {"cin", "attention", "dnn", "fm"}, set()),
    ],
)
def test_a_run_logs_only_the_config_sections_its_model_reads(model, absent, present):
    params = run_params(_context(model=model))
    sections = {key.split(".", 1)[0] for key in params if "." in key}
    # history: the behaviour-history field is data every model may read
    assert sections == {"data", "features", "history", "training"} | present
    assert unused_config_sections(model) == absent
    assert params["model"] == model and params["num_params"] == "123"


def test_the_run_params_carry_the_torch_thread_counts():
    params = run_params(_context())
    assert params["torch_num_threads"] == str(torch.get_num_threads())
    assert params["torch_num_interop_threads"] == str(torch.get_num_interop_threads())
    assert cpu_model() and cpu_model() != "unknown"


def _schema() -> DatasetSchema:
    # field dims differ from fm.embed_dim, so the shared space has projections
    return DatasetSchema(
        (
            FieldSchema("user_id", FeatureType.SPARSE, 20, 8),
            FieldSchema("movie_id", FeatureType.SPARSE, 30, 6),
            FieldSchema("genres", FeatureType.SEQUENCE, 9, 4, max_length=4),
            # the behaviour history (sasrec reads nothing else besides movie_id)
            FieldSchema("history", FeatureType.SEQUENCE, 30, 6, max_length=5, shares="movie_id"),
        )
    )


# a value per model section that changes the shape of some weight of a model reading it
SHAPE_CHANGES = {
    "fm": "fm.embed_dim=5",
    "dnn": "dnn.hidden_units=[12]",
    "cin": "cin.layer_sizes=[5]",
    "attention": "attention.attention_dim=3",
}


@pytest.mark.parametrize("model", sorted(MODEL_REGISTRY))
def test_config_sections_name_what_each_model_builds_from(model):
    """A declared section changes the model; a section not declared does not."""
    base = ["fm.embed_dim=7", "dnn.hidden_units=[16, 8]", "cin.layer_sizes=[6, 4]"]
    base += ["attention.attention_dim=4", "attention.num_heads=2"]

    def shapes(*overrides: str) -> dict[str, tuple[int, ...]]:
        config = build_config(
            {}, [f"model_name={model}", "history.enabled=true", *base, *overrides]
        )
        built = create_model(model, _schema(), config)
        return {k: tuple(v.shape) for k, v in built.state_dict().items()}

    reference = shapes()
    declared = set(MODEL_REGISTRY[model].config_sections)
    assert declared <= set(SHAPE_CHANGES)
    for section, override in SHAPE_CHANGES.items():
        assert (shapes(override) != reference) == (section in declared), (model, section)


# ------------------------------------------------------- a real run, end to end
def _ctr_train(cwd, *args: str) -> subprocess.CompletedProcess:
    """`ctr train ARGS` in `cwd`, as a user runs it (not on a terminal), output captured."""
    return subprocess.run(
        [str(VENV_BIN / "ctr"), "train", *args],
        env=subprocess_env(None),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_a_short_tracked_run_prints_the_summary_and_no_pickle_warning(tmp_path):
    from mlflow import MlflowClient

    proc = _ctr_train(tmp_path, "--model", "deepfm", "--override", *FAST_OVERRIDES)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "pickle" not in proc.stderr.lower(), proc.stderr
    assert "Downloading artifacts" not in proc.stderr, proc.stderr
    # not a terminal: no progress bar; the trainer's log lines (on stdout) still show
    assert "row/s" not in proc.stdout + proc.stderr and "\r" not in proc.stderr
    assert "INFO ctr.trainer: epoch 1/1" in proc.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("movielens-100k").experiment_id])
    # the summary closes the output
    out = proc.stdout[proc.stdout.index("deepfm: best epoch") :]
    assert out.startswith("deepfm: best epoch 1 of 1, chosen on val_ndcg_at_10")
    assert out.rstrip().endswith("# register the best run's model")
    validation = next(line for line in out.splitlines() if line.startswith("validation"))
    assert validation.split()[1] == f"{run.data.metrics['best_val_hr_at_10']:.4f}"
    assert f"run {run.info.run_id} in experiment movielens-100k" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in out
    assert "ctr compare --experiment movielens-100k" in out
    assert "ctr promote --experiment movielens-100k" in out

    params, tags = run.data.params, run.data.tags
    assert not [k for k in params if k.startswith(("cin.", "attention."))]
    assert params["dnn.hidden_units"] == "[16]" and params["fm.embed_dim"] == "4"
    assert int(params["torch_num_threads"]) >= 1
    assert int(params["torch_num_interop_threads"]) >= 1
    assert tags["cpu"] == cpu_model()


@pytest.mark.slow
def test_an_untracked_run_prints_the_table_and_the_checkpoint(tmp_path):
    proc = _ctr_train(
        tmp_path,
        *["--model", "lr", "--no-track", "--override", *FAST_OVERRIDES],
        f"training.checkpoint_dir={tmp_path / 'ckpt'}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()
    (best,) = (tmp_path / "ckpt").glob("lr-*/best.pt")
    assert "lr: best epoch 1 of 1" in proc.stdout
    assert "validation" in proc.stdout and "test" in proc.stdout
    assert f"not tracked; best checkpoint: {best}" in proc.stdout
    assert f"ctr evaluate --checkpoint {best}" in proc.stdout
