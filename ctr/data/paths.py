"""Where the data files are: relative paths resolve from the working directory,
then from the project root, so commands work from anywhere inside a checkout."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_dir(data_dir: str | Path) -> Path:
    """A relative data_dir is looked up in the working directory, then in the
    project root (so `ctr train` works from anywhere inside a checkout)."""
    path = Path(data_dir)
    if path.is_absolute() or path.exists():
        return path
    candidate = PROJECT_ROOT / path
    return candidate if candidate.exists() else path
