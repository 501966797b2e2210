"""`ctr compare`, the command (registered in experiments/cli.py): the finished runs of
an experiment, or a sweep's trials, as a table, csv or json, with a plot and a UI link.
experiments/compare.py (and MLflow) are imported only when it runs."""

from __future__ import annotations

import click

from experiments.cli_options import run_selection_options, user_errors
from experiments.cli_sweep import sweep_name_option

# rows `ctr compare` lists unless --top N or --all: fetching every run's record of a
# large experiment takes seconds (about 8 for 1,000 runs on a PostgreSQL-backed server)
COMPARE_LIMIT = 20


@click.command()
@run_selection_options(
    metric_help="Sort by this metric.",
    filter_help="MLflow run filter, e.g. \"params.model = 'deepfm'\".",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=None,
    help=f"Show only the best N (default {COMPARE_LIMIT}; --all: every run).",
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Show every run (slower on a large experiment: every run's record is fetched).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), default=None, help="PNG of the per-epoch curves."
)
@click.option("--diff-only", is_flag=True, help="Show only the params that differ between runs.")
@click.option(
    "--group-by",
    multiple=True,
    metavar="PARAM",
    help="Fold runs by a param (e.g. params.model): mean ± std and the run count.",
)
@click.option("--all-metrics", is_flag=True, help="Every val/test metric (csv/json: always).")
@sweep_name_option
def compare(
    runs: dict[str, str | None],
    top: int | None,
    show_all: bool,
    fmt: str,
    plot: str | None,
    diff_only: bool,
    group_by: tuple[str, ...],
    all_metrics: bool,
    sweep_name: str | None,
) -> None:
    """Compare the finished runs of an experiment (or a sweep's trials), best first.

    The best runs (or groups) only, as many as --top says, unless --all; a sweep's
    trials are all listed unless --top N is given.
    """
    if show_all and top is not None:
        raise click.UsageError("give --top N or --all, not both")
    with user_errors():
        from experiments.cli_sweep import compare_sweep_runs
        from experiments.compare import compare_runs, plot_metric_curves, render

        cmp = (
            compare_sweep_runs(sweep_name, runs, top)
            if sweep_name
            else compare_runs(
                **runs,
                top=None if show_all else top or COMPARE_LIMIT,
                diff_only=diff_only,
                group_by=group_by,
                all_metrics=all_metrics or fmt != "table",
            )
        )
        click.echo(render(cmp, fmt))
        notes_to_stderr = fmt != "table"
        if cmp.more and top is None:  # cut at the default limit: say so
            what = "groups" if group_by else "runs"
            click.echo(
                f"(the best {len(cmp.rows)} {what}; more rank below them: --top N lists "
                f"the best N, --all every one)",
                err=notes_to_stderr,
            )
        if plot:
            path = plot_metric_curves(cmp, plot)
            click.echo(f"plot: {path}", err=notes_to_stderr)
        if cmp.ui_url:
            click.echo(f"compare in the MLflow UI: {cmp.ui_url}", err=notes_to_stderr)
