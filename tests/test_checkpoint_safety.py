"""Checkpoints from untrusted hands: loading one never runs code the file names.

The crafted files here are real attacks: a pickle whose loading calls
open(path, "w"). Each test checks that ctr refuses the file with a message that
names it, and that the file the payload would create does not appear; one test
loads the same file the unsafe way to prove the payload does run there.
"""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.config import load_config
from ctr.errors import CTRError
from ctr.training import build_trainer
from ctr.utils import load_checkpoint, save_checkpoint
from tests.conftest import FAST_OVERRIDES, ROOT, VENV_BIN, subprocess_env


class _CreatesFile:
    """Unpickling this calls open(path, "w"): the file appearing means code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A file shaped like a ctr checkpoint whose model_state runs code when unpickled."""
    torch.save(
        {
            "version": 1,
            "model_name": "lr",
            "config": {},
            "schema": {"fields": []},
            "model_state": {"weight": _CreatesFile(marker)},
        },
        path,
    )
    return path


def _ctr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `ctr` command, as a user runs it; output captured."""
    return subprocess.run(
        [str(VENV_BIN / "ctr"), *args],
        env=subprocess_env(None),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_load_checkpoint_refuses_a_crafted_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "created-by-the-checkpoint"
    path = _crafted_checkpoint(tmp_path / "best.pt", marker)

    with pytest.raises(CTRError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not marker.exists()
    assert message.startswith(f"{path} is not a ctr checkpoint and was refused")
    assert "(io.open)" in message  # what the file would call (builtins.open pickles as io.open)
    assert "holds only tensors" in message and "train again" in message
    assert "weights_only=False" not in message  # no advice to load it the unsafe way
    assert info.value.__cause__ is None

    # the control: the unsafe load that ctr no longer does really runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_files_that_are_no_checkpoint_are_errors_naming_them(tmp_path):
    marker = tmp_path / "created-by-the-pickle"
    files = {
        "noise.pt": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.pt": b"",
        # a plain pickle (not torch.save's zip) of a foreign object with the same payload
        "foreign.pkl": pickle.dumps({"model_state": _CreatesFile(marker)}, protocol=2),
    }
    reasons = {
        "noise.pt": "not the zip archive torch.save writes",
        "empty.pt": "the file is empty",
        "foreign.pkl": "not the zip archive torch.save writes",
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CTRError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path} is not a ctr checkpoint"), name
        assert reasons[name] in str(info.value)
        assert "expected a file written by ctr train" in str(info.value)
    assert not marker.exists()


def test_ctr_evaluate_refuses_foreign_files_and_exits_1_without_a_traceback(tmp_path):
    marker = tmp_path / "created-by-the-checkpoint"
    crafted = _crafted_checkpoint(tmp_path / "crafted.pt", marker)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expected = {
        crafted: "is not a ctr checkpoint and was refused",
        noise: "is not a ctr checkpoint",
    }
    for path, phrase in expected.items():
        proc = _ctr("evaluate", "--checkpoint", str(path), cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"Error: {path} {phrase}" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_save_checkpoint_refuses_values_a_safe_load_would_refuse(tmp_path):
    path = tmp_path / "last.pt"
    bad = {
        "numpy float": ({"history": [{"epoch": 1, "lr": np.float64(0.1)}]}, "['history'][0]['lr']"),
        "set": ({"seen": {1, 2}}, "['seen']"),
        "object": ({"config": {"path": Path("x")}}, "['config']['path']"),
    }
    for label, (state, where) in bad.items():
        with pytest.raises(TypeError, match="a checkpoint holds only tensors") as info:
            save_checkpoint(state, path)
        assert f"state{where}" in str(info.value), label
    with pytest.raises(TypeError, match="expected str or int keys"):
        save_checkpoint({"state": {(1, 2): 0}}, path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written

    # what ctr has always written: tensors, OrderedDict state_dicts, plain values
    plain = {
        "model_state": torch.nn.Linear(2, 1).state_dict(),
        "optimizer_state": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
        "history": [{"epoch": 1, "lr": 0.1, "best": float("inf")}],
        "betas": (0.9, 0.999),
        "scheduler_state": None,
    }
    # written by torch.save directly, as checkpoints were before save_checkpoint checked them
    torch.save(plain, tmp_path / "earlier.pt")
    for written in (save_checkpoint(plain, path), tmp_path / "earlier.pt"):
        loaded = load_checkpoint(written)
        assert loaded["history"] == plain["history"] and loaded["betas"] == (0.9, 0.999)
        assert torch.equal(loaded["model_state"]["weight"], plain["model_state"]["weight"])


def _tiny_trainer(tmp_path: Path, name: str, *overrides: str):
    config = load_config(ROOT / "configs/lr_movielens.yaml", [*FAST_OVERRIDES, *overrides])
    trainer, _ = build_trainer(config, None, tmp_path / name)
    return trainer


@pytest.mark.slow
def test_a_trained_checkpoint_loads_weights_only_resumes_and_evaluates(tmp_path):
    first = _tiny_trainer(tmp_path, "first", "training.num_epochs=1")
    first.fit()
    last = first.checkpoint_dir / "last.pt"
    # torch's own safe loader reads it: nothing in it but tensors and plain values
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and state["model_name"] == "lr"
    assert isinstance(state["config"], dict) and isinstance(state["schema"], dict)

    resumed = _tiny_trainer(
        tmp_path, "resumed", "training.num_epochs=2", f"training.resume_from={last}"
    )
    resumed.fit()
    assert resumed.epoch == 2
    assert resumed.history[0] == first.history[0]  # epoch 1 came from the checkpoint
    assert torch.load(resumed.checkpoint_dir / "last.pt", weights_only=True)["epoch"] == 2

    proc = _ctr("evaluate", "--checkpoint", str(last), "--split", "val", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("val_hr_at_10 "))
    assert 0.0 < float(line.split()[-1]) <= 1.0


@pytest.mark.slow
def test_ctr_train_refuses_to_resume_from_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "created-by-the-checkpoint"
    crafted = _crafted_checkpoint(tmp_path / "last.pt", marker)
    proc = _ctr(
        *["train", "--model", "lr", "--no-track", "--override", *FAST_OVERRIDES],
        f"training.checkpoint_dir={tmp_path / 'ckpt'}",
        f"training.resume_from={crafted}",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"Error: {crafted} is not a ctr checkpoint and was refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert "epoch 1/1" not in proc.stdout  # it stopped before training
