"""The `ctr` command line: one click group, thin over the library.

Heavy imports (torch, mlflow) happen inside commands so `ctr --help` is fast.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctr")
def main() -> None:
    """Train, evaluate, compare and promote CTR models on MovieLens-100K."""


if __name__ == "__main__":
    main()
