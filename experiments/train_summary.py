"""What `ctr train` prints when a run ends: the best epoch's validation and test
metrics as a table, where the run is, and the commands to look at it next.

    print(run_summary(run_id))  # read back from the tracked run
    print(format_summary(summary, model="deepfm", monitor="val_ndcg_at_10", ...))
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.tracking_errors import is_server_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

# the summary table's columns: (title, metric name after the val_ / test_ prefix)
SUMMARY_COLUMNS = (
    ("HR@10", "hr_at_10"),
    ("NDCG@10", "ndcg_at_10"),
    ("full NDCG@10", "full_ndcg_at_10"),
    ("AUC", "auc"),
)


@dataclass(frozen=True)
class RunLocation:
    """Where a tracked run is: enough to open it in the UI or name it to ctr commands."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    run_id: str

    def ui_url(self) -> str | None:
        """The run's page in the MLflow UI, when the tracking URI is an http(s) server."""
        if not is_server_uri(self.tracking_uri):
            return None
        base = self.tracking_uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def format_summary(
    metrics: Mapping[str, Any],
    *,
    model: str,
    monitor: str,
    best_epoch: int,
    epochs_run: int,
    stopped_early: bool = False,
    run: RunLocation | None = None,
    checkpoint: str | Path | None = None,
) -> str:
    """What `ctr train` prints at the end: the best epoch's validation and test
    metrics as a table, where the run is, and the commands to look at it next.

    `metrics` holds best_val_* and test_* values (a run's MLflow metrics or the
    trainer's summary); a missing one shows as '-'. Without `run` (an untracked
    run) the checkpoint path and `ctr evaluate` are given instead.
    """
    stop = " (stopped early)" if stopped_early else ""
    lines = [f"{model}: best epoch {best_epoch} of {epochs_run}{stop}, chosen on {monitor}", ""]
    widths = [max(len(title), 6) for title, _ in SUMMARY_COLUMNS]
    header = "  ".join(f"{t:>{w}}" for (t, _), w in zip(SUMMARY_COLUMNS, widths, strict=True))
    lines.append(f"{'':<10}  {header}")
    for label, prefix in (("validation", "best_val_"), ("test", "test_")):
        cells = []
        for (_, name), width in zip(SUMMARY_COLUMNS, widths, strict=True):
            value = metrics.get(prefix + name)
            cells.append(f"{'-' if value is None else f'{float(value):.4f}':>{width}}")
        lines.append(f"{label:<10}  {'  '.join(cells)}")
    lines.append("")
    if run is None:
        lines.append(f"not tracked; best checkpoint: {checkpoint}")
        lines += ["", "next:", f"  ctr evaluate --checkpoint {shlex.quote(str(checkpoint))}"]
        return "\n".join(lines)

    experiment = shlex.quote(run.experiment_name)
    lines.append(f"run {run.run_id} in experiment {run.experiment_name}")
    lines.append(f"tracking URI: {run.tracking_uri}")
    url = run.ui_url()
    if url:
        lines.append(f"in the UI: {url}")
    if checkpoint:
        lines.append(f"best checkpoint: {checkpoint}")
    lines += ["", "next:"]
    if url is None:
        lines.append(
            f"  mlflow ui --backend-store-uri {shlex.quote(run.tracking_uri)}"
            f"  # the UI, then open http://127.0.0.1:5000"
        )
    lines.append(f"  ctr compare --experiment {experiment}  # this run beside the others")
    lines.append(f"  ctr promote --experiment {experiment}  # register the best run's model")
    return "\n".join(lines)


def run_summary(run_id: str, client: MlflowClient | None = None) -> str:
    """The summary of a finished tracked run, read back from MLflow (so it shows
    what the run recorded)."""
    import mlflow
    from mlflow import MlflowClient

    client = client or MlflowClient()
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    tags = run.data.tags
    checkpoint_dir = tags.get("checkpoint_dir")
    return format_summary(
        run.data.metrics,
        model=tags.get("model", run.data.params.get("model", "?")),
        monitor=run.data.params.get("training.monitor", "the validation metric"),
        best_epoch=int(tags.get("best_epoch", 0)),
        epochs_run=int(tags.get("epochs_run", 0)),
        stopped_early=tags.get("stopped_early") == "true",
        run=RunLocation(
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_id=experiment.experiment_id,
            experiment_name=experiment.name,
            run_id=run_id,
        ),
        checkpoint=Path(checkpoint_dir) / "best.pt" if checkpoint_dir else None,
    )
