"""The `ctr` command line: one click group, thin over the library.

Heavy imports (torch, mlflow) happen inside commands so `ctr --help` is fast.
Each command parses its options, calls one library function and prints.

Errors: the project's own error types (ctr.errors.CTRError and its subclasses:
ConfigError, DataNotFoundError, RunQueryError, PromotionError, ...) say what
was wrong and the fix, so they become a one-line message and exit code 1;
click's usage errors exit 2. Any other exception is a bug and keeps its
traceback. `ctr --debug ...` (or CTR_DEBUG=1) shows the traceback of every error.
The error handling and the option groups several commands share are in
experiments/cli_options.py.
"""

from __future__ import annotations

import shlex

import click

from experiments.cli_compare import compare
from experiments.cli_data import data
from experiments.cli_options import override_options, run_selection_options, user_errors
from experiments.cli_server import server
from experiments.cli_sweep import from_sweeps_options, sweep, sweep_name_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    envvar="CTR_DEBUG",
    help="Show the full traceback of every error, not only of bugs (or set CTR_DEBUG=1).",
)
@click.version_option(package_name="ctr")
def main(debug: bool) -> None:
    """Train, evaluate, compare and promote CTR models on MovieLens-100K."""


# ---------------------------------------------------------------------- train
def _shorthand_overrides(epochs: str, batch_size: str, learning_rate: str, seed: str) -> list[str]:
    """--epochs etc. as config overrides; "" means "use the config" (MLproject defaults)."""
    pairs = [
        ("training.num_epochs", epochs),
        ("training.batch_size", batch_size),
        ("training.learning_rate", learning_rate),
        ("seed", seed),
    ]
    return [f"{key}={value.strip()}" for key, value in pairs if value and value.strip()]


@main.command()
@click.option(
    "--config",
    "config_path",
    default="",
    metavar="PATH",
    help="Experiment YAML (default with --model: configs/<model>_movielens.yaml).",
)
@click.option(
    "--model", default="", help="Model name; picks its config when --config is not given."
)
@override_options(
    "Config override, e.g. training.num_epochs=2 (repeatable; more KEY=VALUE may follow)."
)
@click.option(
    "--overrides",
    "overrides_text",
    default="",
    metavar="'K=V K=V'",
    help="Space-separated overrides in one string (what the MLproject passes).",
)
@click.option("--epochs", default="", help="Shorthand for training.num_epochs.")
# the underscore spellings are what `mlflow run -P batch_size=...` passes on
@click.option("--batch-size", "--batch_size", default="", help="Shorthand for training.batch_size.")
@click.option(
    "--learning-rate", "--learning_rate", default="", help="Shorthand for training.learning_rate."
)
@click.option("--seed", default="", help="Shorthand for seed.")
@click.option(
    "--experiment-name", default="movielens-100k", show_default=True, help="MLflow experiment."
)
@click.option("--run-name", default=None, help="MLflow run name (default: MLflow picks one).")
@click.option(
    "--track/--no-track",
    default=True,
    show_default=True,
    help="Track the run in MLflow (--no-track: train, print the summary and checkpoint).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    help="Train as N processes under torchrun on this machine (data parallel; rank 0 tracks).",
)
def train(
    config_path: str,
    model: str,
    overrides: tuple[str, ...],
    overrides_text: str,
    epochs: str,
    batch_size: str,
    learning_rate: str,
    seed: str,
    experiment_name: str,
    run_name: str | None,
    track: bool,
    nproc: int | None,
) -> None:
    """Train one model as one tracked MLflow run.

    \b
    ctr train --config configs/deepfm_movielens.yaml --override training.num_epochs=2
    ctr train --model xdeepfm --override training.num_epochs=2 training.batch_size=512
    ctr train --model deepfm --nproc 2   # 2 processes under torchrun, one run

    Tracks into $MLFLOW_TRACKING_URI, or ./mlflow.db when it is unset. Started by
    `mlflow run`, it logs into the run MLflow created.
    """
    if not config_path and not model:
        raise click.UsageError("give --config PATH or --model NAME")
    all_overrides = [
        *overrides,
        *shlex.split(overrides_text),
        *_shorthand_overrides(epochs, batch_size, learning_rate, seed),
    ]
    with user_errors():
        if nproc is not None:
            from experiments.launch import launch_training, train_arguments
            from experiments.train import load_training_config

            # a bad config fails here, before N processes start and fail alike
            load_training_config(config_path or None, all_overrides, model or None)
            args = train_arguments(
                config_path, model, all_overrides, experiment_name, run_name, track
            )
            root = click.get_current_context().find_root()
            launch_training(nproc, args, debug=bool(root.params.get("debug")))
            return
        from experiments.train import run_summary, run_training, train_untracked

        if not track:
            text = train_untracked(config_path or None, all_overrides, model=model or None)
            if text:  # "" on torchrun's other ranks: rank 0 prints the summary
                click.echo(text)
            return
        run_id = run_training(
            config_path or None,
            all_overrides,
            experiment_name=experiment_name,
            run_name=run_name,
            model=model or None,
        )
        if run_id is None:  # torchrun's other ranks: rank 0 prints the summary
            return
        summary = run_summary(run_id)
    click.echo(summary)


# -------------------------------------------------------------------- promote
@main.command()
@run_selection_options(
    metric_help="Choose by this metric.",
    filter_help="Only consider runs matching this MLflow filter.",
)
@click.option(
    "--model-name", default=None, help="Registered model (default: <model>-movielens of the run)."
)
@click.option("--alias", default="champion", show_default=True)
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("--force", is_flag=True, help="Promote even if the current alias holder is better.")
@sweep_name_option
def promote(
    runs: dict[str, str | None],
    model_name: str | None,
    alias: str,
    dry_run: bool,
    force: bool,
    sweep_name: str | None,
) -> None:
    """Register the best finished run's (or sweep trial's) model and point the alias at it."""
    with user_errors():
        from experiments.cli_sweep import sweep_runs
        from experiments.promote import promote_best_run

        runs = sweep_runs(sweep_name, runs) if sweep_name else runs
        result = promote_best_run(
            **runs, model_name=model_name, alias=alias, dry_run=dry_run, force=force
        )
    click.echo(result.message)
    if not dry_run:
        click.echo(f'load it with mlflow.pytorch.load_model("{result.uri}")')
        if result.recommender_uri:
            click.echo(
                f"serve it with: mlflow models serve -m {result.recommender_uri} "
                f"--env-manager local -h 127.0.0.1 -p 5001"
            )
        click.echo(result.uri)


# ------------------------------------------------------------------ recommend
@main.command()
@click.option(
    "--model-uri",
    default="models:/deepfm-movielens-recommender@champion",
    show_default=True,
    help="A recommender model: registered (models:/NAME@ALIAS), logged, or a local path.",
)
@click.option("--user", "user_id", type=int, required=True, help="Raw MovieLens user id.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--include-seen", is_flag=True, help="Also rank the user's training items.")
def recommend(model_uri: str, user_id: int, k: int, include_seen: bool) -> None:
    """Print the top-K movies (title and score) of one user.

    \b
    ctr recommend --user 196
    ctr recommend --model-uri models:/xdeepfm-movielens-recommender@champion --user 196 --k 5
    """
    with user_errors():
        from mlflow.exceptions import MlflowException

        from ctr.serving import format_recommendations
        from experiments.serving import recommend

        if model_uri.startswith(("models:/", "runs:/")):
            from experiments.train import check_tracking_server

            check_tracking_server()  # fail in seconds, not after minutes of retries
        try:
            table = recommend(model_uri, user_id, k, exclude_seen=not include_seen)
        except MlflowException as exc:
            raise click.ClickException(f"cannot recommend from {model_uri}: {exc.message}") from exc
    click.echo(format_recommendations(table, user_id, model_uri))


# ------------------------------------------------------------------- evaluate
@main.command()
@click.option(
    "--checkpoint",
    "checkpoint_path",
    required=True,
    metavar="PATH",
    help="A best.pt / last.pt written by the trainer.",
)
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
def evaluate(checkpoint_path: str, split: str) -> None:
    """Rank a split with a checkpoint's model and print its metrics as a table.

    \b
    ctr evaluate --checkpoint checkpoints/deepfm-20260101-120000/best.pt --split test
    """
    with user_errors():
        from ctr.training import evaluate_checkpoint

        metrics = evaluate_checkpoint(checkpoint_path, split)
    width = max(len(k) for k in metrics)
    click.echo(f"{'metric':<{width}}  value")
    for key, value in metrics.items():
        click.echo(f"{key:<{width}}  {value:.4f}")


# -------------------------------------------------------------------- results
@main.command()
@click.option(
    "--models",
    default="all",
    help="Comma-separated models (default: every registered model).",
)
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated seeds.")
@click.option("--readme", default="README.md", show_default=True, help="README to update.")
@click.option(
    "--output", default="results/results.json", show_default=True, help="Per-seed numbers."
)
@override_options("Config override applied to every run (repeatable; more KEY=VALUE may follow).")
@click.option(
    "--track/--no-track",
    default=True,
    show_default=True,
    help="Track every run in MLflow (experiment movielens-100k-results).",
)
@click.option(
    "--from-json",
    "from_json",
    default=None,
    metavar="PATH",
    help="Re-render the table from a results JSON written earlier, without training.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs trained in parallel processes (one torch thread each).",
)
@click.option(
    "--update",
    is_flag=True,
    help="Retrain only --models and replace their rows in --output; keep the other rows.",
)
@from_sweeps_options
def results(
    models: str,
    seeds: str,
    readme: str,
    output: str,
    overrides: tuple[str, ...],
    track: bool,
    jobs: int,
    from_json: str | None,
    update: bool,
    from_sweeps: bool,
    trials: int,
    sweep_prefix: str,
) -> None:
    """Train every model with 3 seeds and write the README results table.

    \b
    ctr results                       # all registered models, seeds 1,2,3
    ctr results --models deepfm,fm --seeds 1
    ctr results --models deepfm --update  # retrain deepfm, keep the other rows
    ctr results --models lr --seeds 1 --override training.num_epochs=2 training.batch_size=512
    ctr results --from-sweeps --trials 24 --jobs 2  # each model's config tuned first (fair)
    """
    with user_errors():
        from experiments.results import write_results

        table = write_results(
            models,
            seeds,
            readme=readme,
            output=output,
            overrides=overrides,
            track=track,
            jobs=jobs,
            from_json=from_json,
            update=update,
            sweep_trials=trials if from_sweeps else None,
            sweep_prefix=sweep_prefix,
            log=click.echo,
        )
    click.echo(table)
    if not from_json:
        click.echo(f"\nwrote {output} and the results table in {readme}")


main.add_command(compare)  # `ctr compare`, defined in experiments/cli_compare.py
main.add_command(server)  # `ctr server`, defined in experiments/cli_server.py
main.add_command(data)  # `ctr data download`, defined in experiments/cli_data.py
main.add_command(sweep)  # `ctr sweep`, defined in experiments/cli_sweep.py


if __name__ == "__main__":
    main()
