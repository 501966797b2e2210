"""Data pipeline timings on MovieLens-100K (no model).

    python benchmarks/data_pipeline.py [--data-dir data/ml-100k] [--repeats 5]

Prints the median over repeats of:
  build    read + split + encode + evaluation candidates (MovieLensAdapter.build)
  resample one epoch of training negatives (train_ds.sample_epoch)
  iterate  one shuffled epoch of batches of 1024 (EpochRows.iter_batches: each
           batch's columns gathered from the user and item tables)
Targets on a 2-core CPU: build < 3 s, resample < 0.3 s, iterate < 0.3 s.
It also prints the bytes an epoch holds per row, and what its rows would take
materialised (every field of every row, as one column each).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from ctr.config import DataConfig, FeatureConfig
from ctr.data import get_adapter

TARGETS = {"build": 3.0, "resample": 0.3, "iterate": 0.3}


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--data-dir", default=str(root / "data" / "ml-100k"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    # the two topped-up users are reported on every build; once is enough here
    logging.getLogger("ctr.data.movielens").setLevel(logging.ERROR)

    data_config = DataConfig(data_dir=args.data_dir)
    adapter = get_adapter(data_config.dataset, args.data_dir, data_config, FeatureConfig())
    built = {}

    def build() -> None:
        built["parts"] = adapter.build()

    results = {"build": _median_seconds(build, args.repeats)}
    _, train_ds, _, _ = built["parts"]
    epochs = iter(range(1, 10_000))
    results["resample"] = _median_seconds(
        lambda: train_ds.sample_epoch(next(epochs), seed=42), args.repeats
    )
    rows = train_ds.sample_epoch(0, seed=42)
    generator = torch.Generator().manual_seed(0)

    def iterate() -> None:
        for _batch in rows.iter_batches(args.batch_size, shuffle=True, generator=generator):
            pass

    results["iterate"] = _median_seconds(iterate, args.repeats)

    print(
        f"MovieLens-100K data pipeline, median of {args.repeats} "
        f"(torch threads: {torch.get_num_threads()}):"
    )
    print(f"  training rows per epoch: {len(rows):,}  batch size: {args.batch_size}")
    batch, _ = rows.take(torch.arange(1))
    row_bytes = sum(v.element_size() * v[0].numel() for v in batch.values()) + 4  # + label
    print(
        f"  epoch memory: {rows.nbytes / len(rows):.1f} bytes per row (materialised: "
        f"{row_bytes} per row); shared tables {rows.tables.nbytes / 1e6:.1f} MB"
    )
    for name, seconds in results.items():
        verdict = "ok" if seconds < TARGETS[name] else "SLOWER than target"
        print(f"  {name:9s} {seconds:7.3f} s   (target < {TARGETS[name]} s: {verdict})")


if __name__ == "__main__":
    main()
