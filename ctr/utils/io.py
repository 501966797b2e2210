from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ctr.errors import MissingFileError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` with torch.save atomically: a temp file in the same
    directory, fsync, then rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint onto `device`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    # weights_only=False: checkpoints hold the config and schema dicts and RNG
    # states next to the tensors; only load checkpoints you wrote yourself.
    return torch.load(path, map_location=device, weights_only=False)
