"""Utilities: seeding, logging and atomic checkpoints."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from ctr.utils import get_logger, load_checkpoint, save_checkpoint, seed_everything


def _draw() -> tuple:
    # seed_everything seeds the legacy global NumPy state, so that is what is checked
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()  # noqa: NPY002


def test_seed_everything_is_deterministic():
    seed_everything(123)
    first = _draw()
    seed_everything(123)
    assert _draw() == first
    seed_everything(124)
    assert _draw() != first
    with pytest.raises(ValueError, match="non-negative int"):
        seed_everything(-1)


def test_save_and_load_checkpoint(tmp_path):
    state = {"epoch": 3, "weights": torch.arange(4.0), "config": {"lr": 0.1}}
    path = save_checkpoint(state, tmp_path / "sub" / "ckpt.pt")
    assert path.is_file()
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["config"] == {"lr": 0.1}
    assert torch.equal(loaded["weights"], torch.arange(4.0))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_file_that_is_no_checkpoint_is_an_error_naming_it(tmp_path):
    from ctr.errors import CTRError

    rng = np.random.default_rng(0)
    files = {
        "notes.txt": b"epoch 3\nloss 0.25\n",
        "random.bin": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.pt": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CTRError, match="is not a ctr checkpoint") as info:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CTRError, match="expected a dict .* got list"):
        load_checkpoint(tmp_path / "list.pt")
    save_checkpoint({"epoch": 1}, tmp_path / "partial.pt")
    with pytest.raises(CTRError, match=r"lacks \['model_state'\]"):
        load_checkpoint(tmp_path / "partial.pt", required=("epoch", "model_state"))
    assert load_checkpoint(tmp_path / "partial.pt", required=("epoch",)) == {"epoch": 1}


def test_failing_save_leaves_no_partial_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, tmp_path / "new.pt")
    monkeypatch.undo()
    # neither a temp file nor a half-written new.pt; the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_get_logger_writes_to_file_once(tmp_path):
    log_file = tmp_path / "logs" / "run.log"
    logger = get_logger("ctr.test_utils", log_file=log_file)
    again = get_logger("ctr.test_utils", log_file=log_file)
    assert again is logger
    assert sum(isinstance(h, logging.FileHandler) for h in logger.handlers) == 1
    logger.info("hello %d", 7)
    for handler in logger.handlers:
        handler.flush()
    assert "hello 7" in log_file.read_text()
    assert log_file.read_text().count("hello 7") == 1
