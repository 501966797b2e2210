"""Compare finished training runs of an experiment: a table, a plot, a UI link.

    cmp = compare_runs("movielens-100k", metric="val_ndcg_at_10", top=5)
    print(render(cmp, "table"))
    plot_metric_curves(cmp, "curves.png")

Val metrics are those of each run's best epoch (`best_val_*`, logged at the
end of a run); test metrics are the best epoch's model on the test split.
`group_by=["params.model"]` folds runs that differ only in seed into one row
with mean, std and the run count.

With `top`, only the best runs are fetched (the store sorts them; see
experiments.runs.top_runs), one more than shown, so that `Comparison.more`
says whether others rank below: every run's record of a 1,000-run experiment
takes seconds to send.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.runs import (
    DEFAULT_METRIC,
    RunQueryError,
    get_client,
    lower_is_better,
    metric_value,
    ranked_runs,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# compare's errors are those of the run queries (an unknown experiment, metric or
# filter), plus an unknown --group-by param or output format
CompareError = RunQueryError

# params shown for every run (--diff-only shows the params that differ instead)
KEY_PARAMS = (
    "seed",
    "training.learning_rate",
    "training.batch_size",
    "training.num_epochs",
    "features.embedding_dim",
    "num_params",
)
# metrics shown in the table (csv and json carry every val/test metric)
TABLE_METRICS = ("auc", "logloss", "hr_at_10", "ndcg_at_10", "full_ndcg_at_10")
ALL_METRICS = (
    "auc",
    "logloss",
    "hr_at_5",
    "hr_at_10",
    "hr_at_20",
    "ndcg_at_5",
    "ndcg_at_10",
    "ndcg_at_20",
    "full_hr_at_10",
    "full_ndcg_at_10",
)
# params that say nothing about the model (excluded from --diff-only / group checks)
_RUN_SPECIFIC_PARAMS = ("seed",)
# The optional parameters of MLproject's main entry point: `mlflow run -P epochs=5`
# logs `epochs` as a param (runs tracked while they were declared carry all of them,
# most empty), but what they set is already in the resolved config's dotted params
# (`--epochs 5` is `training.num_epochs`), so they are left out of --diff-only
LAUNCHER_PARAMS = ("config", "epochs", "batch_size", "learning_rate", "overrides")


def param_name(key: str) -> str:
    """'params.model' -> 'model' (the prefix is optional)."""
    return key[len("params.") :] if key.startswith("params.") else key


def compare_url(tracking_uri: str, experiment_id: str, run_ids: Sequence[str]) -> str | None:
    """The MLflow UI page comparing `run_ids`, when tracking goes to a server."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    experiments = json.dumps([str(experiment_id)], separators=(",", ":"))
    return f"{tracking_uri.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


@dataclass
class Comparison:
    """The result of compare_runs: rows in display order plus what produced them."""

    experiment_id: str
    experiment_name: str
    metric: str
    columns: list[str]
    rows: list[dict[str, Any]]
    run_ids: list[str]
    group_by: list[str] = field(default_factory=list)
    ui_url: str | None = None
    runs: list[Any] = field(default_factory=list, repr=False)
    # per group row: the run ids folded into it (empty without group_by)
    groups: list[list[str]] = field(default_factory=list)
    title: str | None = None  # the table's first line (default: experiment and sort order)
    more: bool = False  # the rows stop at `top`, and more runs (or groups) rank below


def _run_metrics(run: Run, names: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for prefix in ("val", "test"):
        for name in names:
            out[f"{prefix}_{name}"] = metric_value(run, f"{prefix}_{name}")
    return out


def differing_params(runs: Sequence[Run]) -> list[str]:
    """Param keys whose value (or presence) differs between the runs, sorted.

    The launcher params of `mlflow run` (LAUNCHER_PARAMS) are never listed: a run
    started by `ctr train` lacks them, yet may have the same config.
    """
    keys = sorted({k for r in runs for k in r.data.params} - set(LAUNCHER_PARAMS))
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def compare_runs(
    experiment: str,
    metric: str = DEFAULT_METRIC,
    filter_string: str | None = None,
    top: int | None = None,
    diff_only: bool = False,
    group_by: Sequence[str] = (),
    all_metrics: bool = False,
    client: MlflowClient | None = None,
) -> Comparison:
    """Rows of the finished runs of `experiment`, best first by `metric` (with `top`,
    the best `top` rows: runs, or groups with `group_by`)."""
    client = get_client(client)
    # without groups only the `top` rows are shown: fetch just those runs, and one more
    # to know whether others rank below them
    fetch = None if group_by or top is None else top + 1
    exp, runs = ranked_runs(client, experiment, metric, filter_string, top=fetch)
    metric_names = ALL_METRICS if all_metrics else TABLE_METRICS
    group_keys = [param_name(g) for g in group_by]
    if group_keys:
        known = {k for r in runs for k in r.data.params}
        unknown = [g for g in group_keys if g not in known]
        if unknown:
            raise CompareError(
                f"cannot group by {unknown}: not params of these runs; params: {sorted(known)}"
            )
        cmp = _grouped(exp, runs, metric, metric_names, group_keys, top)
    else:
        more = top is not None and len(runs) > top
        runs = runs[:top]
        shown = differing_params(runs) if diff_only else list(KEY_PARAMS)
        shown = [k for k in shown if k != "model"]
        # a sort metric outside the standard columns (e.g. train_loss) gets its own
        extra_metric = metric not in _metric_columns(metric_names)
        rows = []
        for run in runs:
            row: dict[str, Any] = {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "model": run.data.tags.get("model", run.data.params.get("model")),
            }
            row.update({k: run.data.params.get(k) for k in shown})
            row["best_epoch"] = _int_or_none(run.data.tags.get("best_epoch"))
            if extra_metric:
                row[metric] = metric_value(run, metric)
            row.update(_run_metrics(run, metric_names))
            rows.append(row)
        columns = list(rows[0]) if rows else []
        cmp = Comparison(
            experiment_id=exp.experiment_id,
            experiment_name=exp.name,
            metric=metric,
            columns=columns,
            rows=rows,
            run_ids=[r.info.run_id for r in runs],
            runs=list(runs),
            more=more,
        )
    cmp.ui_url = compare_url(_tracking_uri(client), exp.experiment_id, cmp.run_ids)
    return cmp


def _metric_columns(names: Sequence[str]) -> list[str]:
    return [f"{p}_{n}" for p in ("val", "test") for n in names]


def _grouped(exp, runs, metric, metric_names, group_keys, top) -> Comparison:
    groups: dict[tuple, list] = {}
    for run in runs:
        key = tuple(run.data.params.get(k) for k in group_keys)
        groups.setdefault(key, []).append(run)
    columns_metrics = _metric_columns(metric_names)
    if metric not in columns_metrics:
        columns_metrics = [metric, *columns_metrics]
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(group_keys, key, strict=True))
        row["runs"] = len(members)
        row["seeds"] = ",".join(sorted({str(r.data.params.get("seed")) for r in members}))
        others = [k for k in differing_params(members) if k not in _RUN_SPECIFIC_PARAMS]
        row["also_differ"] = ",".join(others)
        for name in columns_metrics:
            values = [v for r in members if (v := metric_value(r, name)) is not None]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        row["run_ids"] = [r.info.run_id for r in members]
        rows.append(row)
    sign = 1.0 if lower_is_better(metric) else -1.0
    rows.sort(key=lambda r: sign * r[f"{metric}_mean"])
    more = top is not None and len(rows) > top
    rows = rows[:top]
    group_members = [row.pop("run_ids") for row in rows]
    run_ids = [rid for ids in group_members for rid in ids]
    by_id = {r.info.run_id: r for r in runs}
    return Comparison(
        experiment_id=exp.experiment_id,
        experiment_name=exp.name,
        metric=metric,
        columns=list(rows[0]) if rows else [],
        rows=rows,
        run_ids=run_ids,
        group_by=list(group_keys),
        runs=[by_id[i] for i in run_ids],
        groups=group_members,
        more=more,
    )


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _tracking_uri(client: MlflowClient) -> str:
    uri = getattr(client, "_tracking_client", None)
    uri = getattr(uri, "tracking_uri", None)
    if uri:
        return uri
    import mlflow

    return mlflow.get_tracking_uri()


# ------------------------------------------------------------------ rendering
def render(cmp: Comparison, fmt: str = "table") -> str:
    """The comparison as 'table' (aligned text), 'csv' or 'json' (a list of rows)."""
    if fmt == "json":
        return json.dumps([_jsonable(r) for r in cmp.rows], indent=2)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cmp.columns, lineterminator="\n")
        writer.writeheader()
        for row in cmp.rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return buf.getvalue().rstrip("\n")
    if fmt == "table":
        return _table(cmp)
    raise CompareError(f"expected format table, csv or json, got {fmt!r}")


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(cmp: Comparison) -> str:
    if cmp.group_by:
        header, body = [], []
        metric_cols = [c[: -len("_mean")] for c in cmp.columns if c.endswith("_mean")]
        plain = [c for c in cmp.columns if not c.endswith(("_mean", "_std"))]
        header = plain + metric_cols
        for row in cmp.rows:
            cells = [_fmt(row[c]) for c in plain]
            for name in metric_cols:
                mean, std = row[f"{name}_mean"], row[f"{name}_std"]
                cells.append(
                    "-"
                    if mean is None
                    else f"{mean:.4f} ± {std:.4f}"
                    if std is not None
                    else f"{mean:.4f} ± n/a"
                )
            body.append(cells)
    else:
        header = [c for c in cmp.columns]
        body = [[_fmt(row.get(c)) for c in header] for row in cmp.rows]
    title = cmp.title or (
        f"experiment {cmp.experiment_name!r} ({cmp.experiment_id}), sorted by {cmp.metric} "
        f"({'lower' if lower_is_better(cmp.metric) else 'higher'} is better)"
    )
    if cmp.group_by:
        title += f", grouped by {', '.join(cmp.group_by)} (mean ± std over runs)"
    return title + "\n" + _align(header, body)


def _align(header: list[str], body: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------- plot
def metric_history_key(metric: str) -> str:
    """The per-epoch key behind a compared metric (best_val_x -> val_x)."""
    return metric[len("best_") :] if metric.startswith("best_") else metric


def plot_metric_curves(
    cmp: Comparison, path: str | Path, client: MlflowClient | None = None
) -> Path:
    """One PNG with the per-epoch curve of the compared metric for every listed run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = get_client(client)
    key = metric_history_key(cmp.metric)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    group_of = {}
    for row, members in zip(cmp.rows, cmp.groups, strict=False):
        label = ", ".join(f"{g}={row[g]}" for g in cmp.group_by)
        group_of.update({rid: label for rid in members})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    group_colors: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, run in enumerate(cmp.runs):
        history = client.get_metric_history(run.info.run_id, key)
        if not history:
            continue
        points = sorted((m.step, m.value) for m in history)
        steps, values = zip(*points, strict=True)
        model = run.data.tags.get("model", run.data.params.get("model", "?"))
        if run.info.run_id in group_of:
            label = group_of[run.info.run_id]
            color = group_colors.setdefault(label, colors[len(group_colors) % len(colors)])
            ax.plot(
                steps,
                values,
                "o-",
                color=color,
                alpha=0.7,
                label=None if label in ax.get_legend_handles_labels()[1] else label,
            )
        else:
            ax.plot(
                steps,
                values,
                "o-",
                color=colors[i % len(colors)],
                label=f"{run.info.run_name} ({model})",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{key} per epoch, experiment {cmp.experiment_name}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
