from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ctr.errors import CTRError, MissingFileError


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


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", required: Sequence[str] = ()
) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint onto `device`.

    Raises MissingFileError when `path` does not exist, and CTRError naming the
    file when it is not a checkpoint: torch.load cannot read it, it holds no dict,
    or the dict lacks one of the `required` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    written_by = "written by ctr train (best.pt or last.pt in its checkpoint directory)"
    try:
        # weights_only=False: checkpoints hold the config and schema dicts and RNG
        # states next to the tensors; only load checkpoints you wrote yourself.
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch.load raises whatever its readers hit on foreign bytes
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise CTRError(
            f"{path} is not a ctr checkpoint (torch.load cannot read it: {reason}); "
            f"expected a file {written_by}"
        ) from exc
    if not isinstance(state, dict):
        raise CTRError(
            f"{path} is not a ctr checkpoint: expected a dict {written_by}, "
            f"got {type(state).__name__}"
        )
    missing = [key for key in required if key not in state]
    if missing:
        raise CTRError(
            f"{path} is not a ctr checkpoint: it lacks {missing}; expected a file {written_by}"
        )
    return state
