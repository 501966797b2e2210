"""What a run shows and logs: the progress bar, a clean stderr (no pickle
warnings), the params (its model's config sections, the torch threads, the CPU)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
import torch

from ctr.config import build_config
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models import MODEL_REGISTRY, create_model
from ctr.training.trainer import _Progress
from experiments.tracking import (
    cpu_model,
    run_params,
    silence_pickle_warnings,
    unused_config_sections,
)


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
    ],
)
def test_a_run_logs_only_the_config_sections_its_model_reads(model, absent, present):
    params = run_params(_context(model=model))
    sections = {key.split(".", 1)[0] for key in params if "." in key}
    assert sections == {"data", "features", "training"} | present
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
        config = build_config({}, [f"model_name={model}", *base, *overrides])
        built = create_model(model, _schema(), config)
        return {k: tuple(v.shape) for k, v in built.state_dict().items()}

    reference = shapes()
    declared = set(MODEL_REGISTRY[model].config_sections)
    assert declared <= set(SHAPE_CHANGES)
    for section, override in SHAPE_CHANGES.items():
        assert (shapes(override) != reference) == (section in declared), (model, section)
