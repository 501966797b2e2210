"""The progress bar drawn while an epoch trains."""

from __future__ import annotations

import os
import sys
import time

import torch
from tqdm import tqdm


class _Progress:
    """The epoch's progress bar (tqdm): rows done, rows/s and the running loss.

    Drawn on stderr when it is a terminal; the environment variable CTR_PROGRESS
    overrides that (1 draws it anywhere, 0 never). tqdm redraws at most every
    `MININTERVAL` seconds and the running loss (a device sync) is read only as
    often, so a batch costs a counter update and a clock read.
    """

    MININTERVAL = 0.5  # seconds between redraws

    def __init__(self, total_rows: int, epoch: int, num_epochs: int) -> None:
        self.bar = tqdm(
            total=total_rows,
            desc=f"epoch {epoch}/{num_epochs}",
            unit="row",
            unit_scale=True,
            mininterval=self.MININTERVAL,
            leave=False,  # the epoch's log line replaces it
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._next_loss_read = 0.0

    @staticmethod
    def enabled() -> bool:
        forced = os.environ.get("CTR_PROGRESS", "").strip().lower()
        if forced in ("1", "true", "yes", "on"):
            return True
        if forced in ("0", "false", "no", "off"):
            return False
        return sys.stderr.isatty()

    def update(self, rows: int, loss_sum: torch.Tensor, batches: int) -> None:
        """`rows` more rows done; the running loss is loss_sum / batches."""
        now = time.monotonic()
        if now >= self._next_loss_read:
            self._next_loss_read = now + self.MININTERVAL
            self.bar.set_postfix(loss=f"{float(loss_sum) / batches:.4f}", refresh=False)
        self.bar.update(rows)

    def close(self) -> None:
        self.bar.close()
