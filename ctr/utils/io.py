"""Checkpoint files: written atomically, read without running code.

A checkpoint holds only tensors and plain values: dict (OrderedDict too, as
state_dict returns), list, tuple, str, int, float, bool and None. That is
what `torch.load(..., weights_only=True)` accepts, so loading one never
unpickles an arbitrary object and a file from someone else cannot run code
when `ctr evaluate` or training.resume_from opens it. save_checkpoint checks
the rule before it writes, so a checkpoint it wrote always loads again.

Checkpoints written by earlier ctr versions (loaded then with
weights_only=False) held the same plain values and load as they are.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ctr.errors import CTRError, MissingFileError

_PLAIN = (str, int, float, bool, type(None))
_CONTAINERS = (dict, OrderedDict, list, tuple)
_WRITTEN_BY = "written by ctr train (best.pt or last.pt in its checkpoint directory)"
_HOLDS = "tensors, numbers, strings, None, and lists, tuples and dicts of them"


def _check_plain(value: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value under `where` that is not a tensor or plain value.

    Exact types, not isinstance: a subclass (an IntEnum, a numpy float64, a
    defaultdict) pickles by its class name, which weights_only loading refuses.
    """
    kind = type(value)
    if kind in _PLAIN or kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(
                    f"checkpoint key {key!r} in {where} is a {type(key).__name__}; "
                    "expected str or int keys"
                )
            _check_plain(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint "
        f"holds only {_HOLDS} (convert it, e.g. float(x), x.tolist(), a state_dict())"
    )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` with torch.save atomically: a temp file in the same
    directory, fsync, then rename, so a crash never leaves a half-written file.

    Raises TypeError, before anything is written, when `state` holds anything
    but tensors and plain values (see the module docstring): load_checkpoint
    would refuse the file.
    """
    _check_plain(state)
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


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions a torch.save archive names beyond tensors and plain
    values, read by scanning its pickle's opcodes (nothing is unpickled); [] when
    `path` is no such archive."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a damaged or TorchScript archive: reported as unreadable instead
        return []


def _short_reason(exc: Exception, path: Path) -> str:
    """One line on why torch.load failed, without torch's advice to retry with
    weights_only=False (that would run whatever code the file names)."""
    text = str(exc)
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "it is not the zip archive torch.save writes"
    marker = "WeightsUnpickler error:"
    if marker in text:  # torch's reason is on the line after the marker
        detail = text.split(marker, 1)[1].strip().splitlines()
        return f"its pickle holds what a checkpoint may not: {detail[0] if detail else '?'}"[:200]
    if "Weights only load failed" in text:
        return "its pickle holds objects other than tensors and plain values"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:200]


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", required: Sequence[str] = ()
) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint onto `device`, safely.

    The file is read with torch.load(weights_only=True): only tensors and plain
    values are rebuilt, so a file from an untrusted source cannot run code.

    Raises MissingFileError when `path` does not exist, and CTRError naming the
    file when it is not a checkpoint: it names other Python objects (refused
    unread), torch.load cannot read it, it holds no dict, or the dict lacks one
    of the `required` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises whatever its readers hit on foreign bytes
        unsafe = _unsafe_globals(path)
        if unsafe:
            shown = ", ".join(unsafe[:5]) + (
                f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else ""
            )
            raise CTRError(
                f"{path} is not a ctr checkpoint and was refused: it names Python functions "
                f"or classes ({shown}) that loading would call, which can run any code "
                "(none was called). "
                f"A ctr checkpoint holds only {_HOLDS}; expected a file {_WRITTEN_BY}. "
                "ctr never loads such files; if it came from your own training, train again "
                "to write a new checkpoint"
            ) from None  # torch's message advises weights_only=False: not to be followed
        raise CTRError(
            f"{path} is not a ctr checkpoint (torch.load cannot read it: "
            f"{_short_reason(exc, path)}); expected a file {_WRITTEN_BY}"
        ) from None
    if not isinstance(state, dict):
        raise CTRError(
            f"{path} is not a ctr checkpoint: expected a dict {_WRITTEN_BY}, "
            f"got {type(state).__name__}"
        )
    missing = [key for key in required if key not in state]
    if missing:
        raise CTRError(
            f"{path} is not a ctr checkpoint: it lacks {missing}; expected a file {_WRITTEN_BY}"
        )
    return state
