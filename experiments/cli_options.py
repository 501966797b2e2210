"""What the commands of `ctr` share: error handling and option groups.

Kept apart from experiments/cli.py, which holds the commands themselves. Only
click is imported here, so `ctr --help` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

DEFAULT_EXPERIMENT = "movielens-100k"
DEFAULT_METRIC = "val_ndcg_at_10"


def _debug_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's typed errors into click.ClickException (exit 1, one line).

    Anything else propagates with its traceback (a bug, not bad input); with
    --debug / CTR_DEBUG=1 the typed errors do too.
    """
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        from ctr.errors import CTRError

        if not isinstance(exc, CTRError) or _debug_requested():
            raise
        message = str(exc)
        run_id = getattr(exc, "mlflow_run_id", None)
        if run_id:
            message += f"\n(MLflow run {run_id} is marked FAILED; its tag 'error' says why)"
        raise click.ClickException(message) from exc


def override_options(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Config overrides for a command, in one form everywhere.

    `--override A=1 --override B=2` and `--override A=1 B=2` (more KEY=VALUE after
    one flag) both reach the command as `overrides=("A=1", "B=2")`.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(
            *args: Any, overrides: tuple[str, ...], more_overrides: tuple[str, ...], **kwargs: Any
        ) -> Any:
            return command(*args, overrides=_merge_overrides(overrides, more_overrides), **kwargs)

        wrapper = click.argument("more_overrides", nargs=-1, metavar="[KEY=VALUE]...")(wrapper)
        return click.option(
            "--override", "overrides", multiple=True, metavar="KEY=VALUE", help=help_text
        )(wrapper)

    return decorate


def _merge_overrides(flagged: tuple[str, ...], trailing: tuple[str, ...]) -> tuple[str, ...]:
    """The pairs given with --override, then those that followed a flag.

    click keeps each group in order but not how the two interleave, so a key
    set in both groups would have no defined last value: that is a usage error.
    """
    stray = [arg for arg in trailing if "=" not in arg]
    if stray:
        raise click.UsageError(f"expected KEY=VALUE overrides, got {stray}")
    keys = {pair.split("=", 1)[0].strip() for pair in flagged}
    twice = sorted(keys & {pair.split("=", 1)[0].strip() for pair in trailing})
    if twice:
        raise click.UsageError(
            f"expected each override key once, got {twice} more than once; give each key one value"
        )
    return (*flagged, *trailing)


def run_selection_options(
    metric_help: str, filter_help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--experiment, --metric and --filter: which finished runs a command ranks.

    They reach the command as one argument, `runs={"experiment": ..., "metric": ...,
    "filter_string": ...}`, the keyword arguments of the run-query functions
    (experiments.compare.compare_runs, experiments.promote.promote_best_run).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(
            *args: Any, experiment: str, metric: str, filter_string: str | None, **kwargs: Any
        ) -> Any:
            runs = {"experiment": experiment, "metric": metric, "filter_string": filter_string}
            return command(*args, runs=runs, **kwargs)

        options = [
            click.option(
                "--experiment",
                default=DEFAULT_EXPERIMENT,
                show_default=True,
                help="Experiment name.",
            ),
            click.option("--metric", default=DEFAULT_METRIC, show_default=True, help=metric_help),
            click.option("--filter", "filter_string", default=None, help=filter_help),
        ]
        for option in reversed(options):  # click lists them in the order written here
            wrapper = option(wrapper)
        return wrapper

    return decorate
