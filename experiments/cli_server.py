"""`ctr server`, the command (registered in experiments/cli.py): options, then
experiments/server.py, imported only when it runs so `ctr --help` stays fast."""

from __future__ import annotations

import click

from experiments.cli_options import user_errors


@click.command()
@click.option(
    "--backend",
    type=click.Choice(["sqlite", "postgres"]),
    default=None,
    help="The store, kept in --dir: a SQLite file (default) or a PostgreSQL cluster of its own.",
)
@click.option(
    "--dir",
    "directory",
    default="mlflow-server",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the store, the artifacts and the server log live (reused by the next start).",
)
@click.option(
    "--backend-store-uri",
    default=None,
    metavar="URI",
    help="An existing database instead (a SQLAlchemy URI MLflow accepts, "
    "e.g. postgresql+psycopg://user:pw@dbhost/mlflow).",
)
@click.option(
    "--artifacts-destination",
    default=None,
    metavar="URI",
    help="Where artifacts are stored (default: DIR/artifacts); clients upload through the server.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 opens it to other machines.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=5000,
    show_default=True,
    help="Port to listen on; 0 takes any free one.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Server processes."
)
def server(
    backend: str | None,
    directory: str,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    workers: int,
) -> None:
    """Start an MLflow tracking server; Ctrl-C or SIGTERM stops it (and its PostgreSQL).

    \b
    ctr server                                       # SQLite in ./mlflow-server, port 5000
    ctr server --backend postgres --dir /var/tmp/ctr-mlflow
    ctr server --backend-store-uri postgresql+psycopg://user:pw@dbhost/mlflow

    It prints the `export MLFLOW_TRACKING_URI=...` line to run with once it answers.
    """
    if backend and backend_store_uri:
        raise click.UsageError("give --backend or --backend-store-uri, not both")
    with user_errors():
        from pathlib import Path

        from experiments.server import ServerOptions, serve

        options = ServerOptions(
            backend=backend or "sqlite",
            directory=Path(directory),
            backend_store_uri=backend_store_uri,
            artifacts_destination=artifacts_destination,
            host=host,
            port=port,
            workers=workers,
        )
        serve(options, log=click.echo)
