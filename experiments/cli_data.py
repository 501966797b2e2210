"""`ctr data`, the command group (registered in experiments/cli.py): data-set chores.
ctr.data.download is imported only when a command runs, so `ctr --help` stays fast."""

from __future__ import annotations

import click

from experiments.cli_options import user_errors


@click.group()
def data() -> None:
    """Data sets: fetch the MovieLens releases from GroupLens."""


@data.command()
@click.argument("name", metavar="NAME")
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where the files go (default: data/ml-100k, data/ml-1m or data/ml-20m).",
)
@click.option("--url", default=None, help="Fetch the same archive from here (a mirror).")
@click.option("--sha256", default=None, help="Expected SHA-256 of the archive (checked instead).")
@click.option("--md5", default=None, help="Expected MD5 of the archive, instead of GroupLens's.")
@click.option("--force", is_flag=True, help="Replace a data directory that already exists.")
def download(
    name: str,
    data_dir: str | None,
    url: str | None,
    sha256: str | None,
    md5: str | None,
    force: bool,
) -> None:
    """Download NAME (movielens-100k, movielens-1m, movielens-20m), check it, extract it.

    \b
    ctr data download movielens-1m                 # -> data/ml-1m
    ctr data download movielens-20m --data-dir /big/ml-20m
    ctr train --override data.dataset=movielens-1m data.data_dir=data/ml-1m
    """
    with user_errors():
        from ctr.data.download import download_dataset

        path = download_dataset(
            name, data_dir, url=url, sha256=sha256, md5=md5, force=force, log=click.echo
        )
    click.echo(f"data.data_dir={path}")
