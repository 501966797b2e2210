"""`ctr sweep`, the command (registered in experiments/cli.py), and the `--sweep NAME`
option of `ctr compare` and `ctr promote`. experiments/sweep.py (and Optuna) are
imported only when a command runs, so `ctr --help` stays fast."""

from __future__ import annotations

import shlex

import click

from experiments.cli_options import override_options, user_errors

sweep_name_option = click.option(
    "--sweep",
    "sweep_name",
    default=None,
    metavar="NAME",
    help="The trials of this sweep (ctr sweep) instead of the experiment's runs; "
    "ranked by the sweep's monitor unless --metric is given.",
)


def metric_given() -> bool:
    """Whether the command line set --metric (else a sweep ranks by its own monitor)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return ctx.get_parameter_source("metric") not in (None, ParameterSource.DEFAULT)


def sweep_runs(sweep_name: str, runs: dict[str, str | None]) -> dict[str, str | None]:
    """`ctr promote --sweep NAME`: the run selection of the sweep's complete trials
    (the experiment and monitor of the sweep; --filter narrows it further)."""
    from experiments.sweep_runs import sweep_selection

    experiment = runs["experiment"] if _experiment_given() else None
    return sweep_selection(
        sweep_name,
        metric=runs["metric"] if metric_given() else None,
        experiment=experiment,
        filter_string=runs["filter_string"],
    )


def _experiment_given() -> bool:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return ctx.get_parameter_source("experiment") not in (None, ParameterSource.DEFAULT)


def compare_sweep_runs(sweep_name: str, runs: dict[str, str | None], top: int | None):
    """`ctr compare --sweep NAME`: the sweep's trials as a Comparison."""
    from experiments.sweep_runs import compare_sweep

    return compare_sweep(
        sweep_name,
        metric=runs["metric"] if metric_given() else None,
        top=top,
        experiment=runs["experiment"] if _experiment_given() else None,
        filter_string=runs["filter_string"],
    )


@click.command()
@click.option("--model", required=True, help="Model to tune (its search space: configs/search/).")
@click.option("--trials", type=click.IntRange(min=0), required=True, help="Trials to add.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trials run at once, in separate processes (one torch thread each).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Start no trial after this long (running trials finish).",
)
@click.option("--name", default=None, help="Sweep name (default: the model); rerun to continue.")
@click.option("--config", "config_path", default=None, metavar="PATH", help="Base config.")
@override_options("Config override of every trial (repeatable; more KEY=VALUE may follow).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Tuning seed of every trial (not 1, 2, 3: those report results).",
)
@click.option("--search-dir", default=None, metavar="DIR", help="Search spaces (configs/search).")
@click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="Optuna's database (default sqlite:///sweeps/NAME.db; never MLflow's).",
)
@click.option(
    "--experiment-name",
    default="movielens-100k-sweeps",
    show_default=True,
    help="MLflow experiment of the parent and trial runs.",
)
@click.option(
    "--enqueue",
    multiple=True,
    metavar="'K=V K=V'",
    help="A trial to run first: values of some dimensions (repeatable).",
)
@click.option(
    "--pruner-startup-trials",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Complete trials before the median pruner stops any.",
)
@click.option(
    "--pruner-warmup-epochs",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Epochs every trial trains before it may be pruned.",
)
def sweep(
    model: str,
    trials: int,
    jobs: int,
    timeout: float | None,
    name: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    seed: int,
    search_dir: str | None,
    storage: str | None,
    experiment_name: str,
    enqueue: tuple[str, ...],
    pruner_startup_trials: int,
    pruner_warmup_epochs: int,
) -> None:
    """Tune a model with Optuna: one MLflow parent run, one nested run per trial.

    \b
    ctr sweep --model deepfm --trials 24 --jobs 2
    ctr sweep --model deepfm --trials 8               # continues the sweep 'deepfm'
    ctr sweep --model fm --trials 4 --name fm-quick --override training.num_epochs=5

    Trials train with the tuning seed and are chosen on validation only (no test
    split). A sweep's first trial is the model's config itself.
    """
    with user_errors():
        from experiments.sweep import run_sweep

        result = run_sweep(
            model,
            trials,
            name=name,
            jobs=jobs,
            timeout=timeout,
            config_path=config_path,
            overrides=overrides,
            seed=seed,
            search_dir=search_dir,
            storage=storage,
            experiment_name=experiment_name,
            enqueue=[shlex.split(e) for e in enqueue],
            pruner_startup_trials=pruner_startup_trials,
            pruner_warmup_epochs=pruner_warmup_epochs,
            log=click.echo,
        )
    counts = ", ".join(f"{n} {s}" for s, n in result.counts.items() if n)
    click.echo(f"\nsweep {result.name}: ran {result.trials_run} trials; in all {counts or 'none'}")
    if result.best_trial is None:
        click.echo("no complete trial yet")
    else:
        click.echo(
            f"best: trial {result.best_trial} (run {result.best_run_id}), "
            f"{result.monitor} {result.best_value:.4f}"
        )
        for key, value in result.best_values.items():
            click.echo(f"  {key} = {value}")
    click.echo(f"parent run {result.parent_run_id} in experiment {result.experiment_name}")
    click.echo(
        f"\nnext:\n  ctr compare --sweep {result.name}  # the trials, best first\n"
        f"  ctr promote --sweep {result.name}  # register the best trial's model"
    )


def from_sweeps_options(command):
    """`ctr results --from-sweeps [--trials N]`: tune every model with the same budget
    first (experiments/results_sweeps.py); they reach the command as from_sweeps, trials
    and sweep_prefix."""
    command = click.option(
        "--sweep-prefix",
        default="results",
        show_default=True,
        help="With --from-sweeps: the sweeps are named PREFIX-<model> (a quick check: another).",
    )(command)
    command = click.option(
        "--trials",
        type=click.IntRange(min=1),
        default=24,
        show_default=True,
        help="With --from-sweeps: each model's sweep brought to this many trials.",
    )(command)
    return click.option(
        "--from-sweeps",
        is_flag=True,
        help="Sweep every model (sweep 'results-<model>', --trials each) and train each "
        "winning config with --seeds.",
    )(command)
