"""Training and evaluation speed of the library beside a bare reference loop.

    python benchmarks/training.py [--rounds 3] [--threads 2] [--model deepfm]

Library: one Trainer epoch (fresh negatives, shuffled batches of 1024, BCE,
Adam) and one RankingEvaluator pass over val (1 + 999 sampled candidates per
user and full ranking against the catalogue). Bare reference, same model class
and data: pre-tensorized epoch rows sliced by a permuted index with forward +
backward + step only; scoring of the same 2.5M rows (pre-built) in batches of
65,536 with no metrics. Rounds alternate library and bare so machine noise
hits both; medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctr.config import load_config  # noqa: E402
from ctr.models import create_model  # noqa: E402
from ctr.training import Trainer, build_data  # noqa: E402
from ctr.training.metrics import RankingEvaluator  # noqa: E402
from ctr.utils import seed_everything  # noqa: E402


def bare_train_epoch(model, rows, batch_size, optimizer, generator) -> float:
    features, labels = rows.features, rows.labels
    n = len(rows)
    order = torch.randperm(n, generator=generator)
    model.train()
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v[idx] for k, v in features.items()}
        loss = F.binary_cross_entropy_with_logits(model(batch).squeeze(-1), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def build_full_rows(split) -> dict[str, torch.Tensor]:
    users, items = split.num_users, len(split.item_ids)
    user_idx = torch.arange(users).repeat_interleave(items)
    item_idx = torch.arange(items).repeat(users)
    rows = {k: torch.as_tensor(v)[user_idx] for k, v in split.user_features.items()}
    rows.update({k: torch.as_tensor(v)[item_idx] for k, v in split.item_features.items()})
    return rows


@torch.inference_mode()
def bare_score(model, tables: list[dict[str, torch.Tensor]], batch_size: int) -> int:
    model.eval()
    rows = 0
    for table in tables:
        n = next(iter(table.values())).shape[0]
        for start in range(0, n, batch_size):
            model({k: v[start : start + batch_size] for k, v in table.items()})
            rows += min(batch_size, n - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="deepfm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    config = load_config(
        root / f"configs/{args.model}_movielens.yaml",
        ["training.early_stopping_patience=0", "training.num_threads=" + str(args.threads)],
    )
    _, schema, train_ds, val_ds, test_ds = build_data(config)
    seed_everything(0)
    lib_model = create_model(args.model, schema, config)
    bare_model = create_model(args.model, schema, config)
    trainer = Trainer(
        lib_model, schema, config, train_ds, val_ds, None, checkpoint_dir="/tmp/ctr-bench"
    )
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=config.training.learning_rate)
    evaluator = RankingEvaluator(val_ds, batch_size=config.training.eval_batch_size)
    sampled = dict(val_ds.candidates.features)
    full = build_full_rows(val_ds)
    rows_per_epoch = len(train_ds)
    print(
        f"{args.model} on ml-100k, {args.threads} threads, batch {config.training.batch_size}, "
        f"{rows_per_epoch:,} training rows/epoch, "
        f"{len(val_ds.candidates) + val_ds.num_users * len(val_ds.item_ids):,} rows scored/eval"
    )
    lib_train, bare_train, lib_eval, bare_eval = [], [], [], []
    for r in range(1, args.rounds + 1):
        t = time.perf_counter()
        trainer._train_epoch(r)
        lib_train.append(time.perf_counter() - t)
        rows = train_ds.sample_epoch(r, 0)  # pre-tensorized, not timed
        t = time.perf_counter()
        bare_train_epoch(
            bare_model,
            rows,
            config.training.batch_size,
            bare_opt,
            torch.Generator().manual_seed(r),
        )
        bare_train.append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluator.evaluate(lib_model)
        lib_eval.append(time.perf_counter() - t)
        t = time.perf_counter()
        scored = bare_score(bare_model, [sampled, full], config.training.eval_batch_size)
        bare_eval.append(time.perf_counter() - t)
        print(
            f"round {r}: train lib {lib_train[-1]:.2f}s bare {bare_train[-1]:.2f}s | "
            f"eval lib {lib_eval[-1]:.2f}s bare {bare_eval[-1]:.2f}s"
        )
    lt, bt = statistics.median(lib_train), statistics.median(bare_train)
    le, be = statistics.median(lib_eval), statistics.median(bare_eval)
    print()
    print(f"{'':22s}{'library':>12s}{'bare':>12s}{'ratio':>8s}  target")
    print(f"{'train s/epoch':22s}{lt:12.2f}{bt:12.2f}{lt / bt:8.2f}  <= 1.15")
    print(
        f"{'train rows/s':22s}{rows_per_epoch / lt:12,.0f}{rows_per_epoch / bt:12,.0f}"
        f"{bt / lt:8.2f}"
    )
    print(f"{'eval s (val)':22s}{le:12.2f}{be:12.2f}{le / be:8.2f}  <= 1.20")
    print(f"{'eval rows/s':22s}{scored / le:12,.0f}{scored / be:12,.0f}{be / le:8.2f}")


if __name__ == "__main__":
    main()
