"""`python -m ctr` runs the `ctr` command line (defined in experiments.cli)."""

from experiments.cli import main

if __name__ == "__main__":
    main()
