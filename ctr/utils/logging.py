from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str, log_file: str | Path | None = None, level: int = logging.INFO):
    """A logger writing to stdout (once) and, if given, to `log_file` as well."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    if not any(getattr(h, "_ctr_stdout", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        handler._ctr_stdout = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if log_file is not None:
        path = Path(log_file).resolve()
        if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            path.parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(path)
            file_handler.setFormatter(logging.Formatter(_FORMAT))
            logger.addHandler(file_handler)
    return logger
