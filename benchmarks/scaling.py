"""Scaling with the data: build, one epoch and evaluation on synthetic sets at ML-20M shape.

    python benchmarks/scaling.py [--sizes 1000000,5000000,20000000] [--threads N]
                                 [--eval-negatives 999] [--full-users 1000]
                                 [--device cpu|cuda] [--batch-size B] [--negatives K]
                                 [--model deepfm]

Each size N runs `synthetic-<N>` (users grow with N, the catalogue with its
square root; ctr/data/synthetic.py) in a subprocess of its own, so that its
peak memory is its own, with configs/<model>_movielens.yaml (its model sizes;
recency weighting kept where the training set has a time order, else unset):

- build: `build_data` (generate, split, encode, the training mask, the val
  and test candidates): wall and CPU seconds, peak RSS, bytes per interaction
  ((peak RSS - RSS before the build) / N), the RSS still held after it, and
  the bytes of the numpy arrays and tensors reachable from the training set
  and the two splits (each buffer once);
- epoch: one Trainer epoch (its negatives drawn, shuffled batches, loss,
  Adam): seconds, rows/s, peak RSS;
- sampled evaluation: `RankingEvaluator.evaluate(model, full_ranking=False)`
  on val, 1 + `--eval-negatives` candidates per user: seconds, rows/s;
- full ranking: a fixed seeded sample of `--full-users` val users against the
  whole catalogue (`CatalogueScorer`, then each positive's rank with the
  user's other interactions skipped, as the evaluator ranks): rows/s, and the
  seconds all users would take at that speed.

Peak RSS is per phase where /proc/self/clear_refs can reset the high-water
mark (VmHWM), else the process's peak so far. The final table gives, per step
between sizes, the time ratios beside the ratio of interactions (equal means
linear growth; full ranking grows with users x items). On a machine loaded by
other work, torch's threads wait for one another: compare CPU seconds, or run
with --threads 1. Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctr.config import load_config  # noqa: E402
from ctr.models import create_model  # noqa: E402
from ctr.training import Trainer, build_data  # noqa: E402
from ctr.training.metrics import full_ranks_from_scores  # noqa: E402
from ctr.training.scoring import CatalogueScorer  # noqa: E402
from ctr.utils import seed_everything  # noqa: E402

GB = 1024**3


# ------------------------------------------------------------------- memory
def proc_status(key: str) -> int:
    """Bytes of a /proc/self/status entry: VmRSS (resident now), VmHWM (peak since reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"expected {key} in /proc/self/status (Linux), found none")


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def held_bytes(*roots) -> int:
    """Bytes of the numpy arrays and tensors reachable from `roots`, each buffer once.

    Walks dicts, lists, tuples and the attributes of ctr objects; views and
    torch.from_numpy tensors share their base's buffer and count once.
    """
    buffers: dict[int, int] = {}  # data pointer -> bytes
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
        elif isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray):
                obj = obj.base
            ptr, size = obj.__array_interface__["data"][0], obj.nbytes
        else:
            if isinstance(obj, dict):
                stack.extend(obj.values())
            elif isinstance(obj, (list, tuple)):
                stack.extend(obj)
            elif type(obj).__module__.startswith("ctr.") and hasattr(obj, "__dict__"):
                stack.extend(vars(obj).values())
            continue
        buffers[ptr] = max(buffers.get(ptr, 0), size)
    return sum(buffers.values())


class Phase:
    """Wall and CPU seconds, peak RSS (and peak CUDA memory) of a `with` block."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Phase:
        gc.collect()
        self.peak_reset = reset_peak()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.peak = proc_status("VmHWM")
        self.cuda_peak = torch.cuda.max_memory_allocated() if self.cuda else 0

    def summary(self) -> dict[str, float]:
        return dict(wall=self.wall, cpu=self.cpu, peak=self.peak, cuda_peak=self.cuda_peak)

    def line(self) -> str:
        text = f"{self.wall:8.2f} s wall, {self.cpu:8.2f} s CPU, peak RSS {self.peak / GB:6.2f} GB"
        if not self.peak_reset:
            text += " (process peak so far)"
        if self.cuda:
            text += f", peak CUDA {self.cuda_peak / GB:.2f} GB"
        return text


# -------------------------------------------------------------------- child
def full_ranking_inputs(split, users: np.ndarray, batch_size: int, device) -> tuple:
    """What full ranking of `users` needs, built once as RankingEvaluator builds it.

    (scorer over the catalogue, the users' fields, (n,) positive rows, (n, I)
    exclusions: the user's other interactions (split.excluded_for), never the positive).
    """
    exclude = torch.zeros(len(users), len(split.item_ids), dtype=torch.bool)  # (n, I)
    for row, u in enumerate(users):
        exclude[row, torch.as_tensor(split.excluded_for(int(u)), dtype=torch.int64)] = True
    positives = torch.as_tensor(np.asarray(split.positive_item_index)[users], dtype=torch.int64)
    exclude[torch.arange(len(users)), positives] = False
    index = torch.as_tensor(users, dtype=torch.int64)
    user_table = {k: torch.as_tensor(v)[index].to(device) for k, v in split.user_features.items()}
    scorer = CatalogueScorer(
        {k: torch.as_tensor(v).to(device) for k, v in split.item_features.items()},
        chunk_rows=batch_size,
        max_users=len(users),
    )
    return scorer, user_table, positives.to(device), exclude.to(device)


def full_ranks(model, scorer, user_table, positives, exclude) -> np.ndarray:
    """(n,) 0-based rank of each user's positive against the catalogue minus exclusions."""
    ranks = torch.empty(len(positives), dtype=torch.int64, device=positives.device)
    was_training = model.training
    model.eval()
    try:
        for start, end, scores in scorer.chunks(model, user_table):  # (u, I)
            ranks[start:end] = full_ranks_from_scores(
                scores, positives[start:end], exclude[start:end]
            )
    finally:
        model.train(was_training)
    return ranks.cpu().numpy()


def measure(n: int, args: argparse.Namespace) -> dict:
    """Build, train one epoch and evaluate synthetic-<n>; print each phase, return figures."""
    logging.getLogger("ctr.data.movielens").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    path = ROOT / f"configs/{args.model}_movielens.yaml"
    overrides = [
        f"data.dataset=synthetic-{n}",
        f"data.num_eval_negatives={args.eval_negatives}",
        "training.full_ranking=false",  # timed below on a user sample
        "training.test_full_ranking=false",
        "training.early_stopping_patience=0",
        f"training.device={args.device}",
        *([f"training.num_threads={args.threads}"] if args.threads else []),
        *([f"training.batch_size={args.batch_size}"] if args.batch_size else []),
        *([f"data.num_negatives={args.negatives}"] if args.negatives else []),
    ]
    config = load_config(path, overrides)
    baseline = proc_status("VmRSS")
    out: dict = {"n": n, "baseline_rss": baseline}

    with Phase(device) as build:
        _, schema, train_ds, val_ds, test_ds = build_data(config)
    gc.collect()
    out["build"] = build.summary()
    out["retained_rss"] = proc_status("VmRSS") - baseline
    parts = {"train": train_ds, "val": val_ds, "test": test_ds}
    held = out["held"] = {k: held_bytes(v) for k, v in parts.items()}
    held["total"] = held_bytes(*parts.values())
    U, n_items, C = val_ds.num_users, len(val_ds.item_ids), val_ds.num_candidates
    out.update(users=U, items=n_items)
    print(f"synthetic-{n:,}: {U:,} users, {n_items:,} items, {n:,} interactions", flush=True)
    print(f"  build          {build.line()}")
    print(
        f"                 {(build.peak - baseline) / n:8.1f} B/interaction over the "
        f"{baseline / GB:.2f} GB baseline; held after it: RSS {out['retained_rss'] / GB:.2f} GB"
    )
    print(
        "                 arrays and tensors: "
        + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in held.items())
        + f" ({held['total'] / n:.1f} B/interaction)",
        flush=True,
    )

    cfg = config.training
    if cfg.recency_half_life is not None:
        try:
            train_ds.recency_weights(cfg.recency_half_life, cfg.recency_floor)
            out["recency"] = True
        except ValueError:  # the training set has no time order
            config = load_config(path, [*overrides, "training.recency_half_life=null"])
            out["recency"] = False
    with tempfile.TemporaryDirectory() as tmp, Phase(device) as setup:
        seed_everything(config.seed)
        model = create_model(config.model_name, schema, config)
        # no test split: its evaluator would only hold memory here
        trainer = Trainer(model, schema, config, train_ds, val_ds, None, checkpoint_dir=tmp)
    print(f"  trainer setup  {setup.line()}")

    with Phase(device) as epoch:
        loss = trainer._train_epoch(1)  # one epoch, nothing else of fit()
    out["epoch"] = {**epoch.summary(), "rows_per_s": len(train_ds) / epoch.wall, "loss": loss}
    print(f"  epoch          {epoch.line()}")
    print(
        f"                 {len(train_ds):,} rows (batch {cfg.batch_size}), "
        f"{len(train_ds) / epoch.wall:,.0f} rows/s, loss {loss:.4f}, recency weights "
        f"{'on' if out.get('recency') else 'off'}",
        flush=True,
    )

    with Phase(device) as sampled:  # the Trainer's RankingEvaluator of val
        metrics = trainer.val_evaluator.evaluate(trainer.eval_model, full_ranking=False)
    rows = U * C
    out["sampled"] = {**sampled.summary(), "rows": rows, "rows_per_s": rows / sampled.wall}
    print(f"  sampled eval   {sampled.line()}")
    print(
        f"                 {U:,} users x {C} candidates = {rows:,} rows, "
        f"{rows / sampled.wall:,.0f} rows/s, val NDCG@10 {metrics['val_ndcg_at_10']:.4f}",
        flush=True,
    )

    users = np.sort(np.random.default_rng(0).choice(U, min(args.full_users, U), replace=False))
    inputs = full_ranking_inputs(val_ds, users, cfg.eval_batch_size, trainer.device)
    with Phase(device) as full:
        ranks = full_ranks(trainer.eval_model, *inputs)
    rows = len(users) * n_items
    all_users_s = full.wall * U / len(users)
    out["full"] = {**full.summary(), "rows_per_s": rows / full.wall, "all_users_s": all_users_s}
    print(f"  full ranking   {full.line()}")
    print(
        f"                 {len(users):,} users x {n_items:,} items = {rows:,} rows, "
        f"{rows / full.wall:,.0f} rows/s, HR@10 {float((ranks < 10).mean()):.4f}; all "
        f"{U:,} users: {all_users_s:,.1f} s at that speed",
        flush=True,
    )
    return out


# ------------------------------------------------------------------- parent
def environment(args: argparse.Namespace) -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    threads = args.threads or torch.get_num_threads()
    text = (
        f"torch {torch.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}; "
        f"{threads} threads ({os.cpu_count()} CPUs), {ram:.1f} GB RAM; device {args.device}"
    )
    if args.device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        text += f" ({props.name}, {props.total_memory / GB:.0f} GB)"
    return text


def run_size(n: int, args: argparse.Namespace) -> dict | None:
    """measure(n) in a fresh interpreter; its figures, or None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", str(n), "--result"]
        done = subprocess.run([*command, str(result)], check=False)
        if done.returncode != 0 or not result.exists():
            print(f"synthetic-{n:,}: the subprocess failed (exit status {done.returncode})")
            return None
        return json.loads(result.read_text())


def print_table(results: list[dict]) -> None:
    print()
    print(
        f"{'interactions':>13s}{'build s':>9s}{'CPU s':>8s}{'peak GB':>9s}{'B/int':>7s}"
        f"{'held B/int':>11s}{'epoch s':>9s}{'rows/s':>10s}{'peak GB':>9s}{'eval s':>8s}"
        f"{'rows/s':>11s}{'full rows/s':>12s}{'all users s':>12s}"
    )
    for r in results:
        b, e, s, f = r["build"], r["epoch"], r["sampled"], r["full"]
        print(
            f"{r['n']:13,d}{b['wall']:9.1f}{b['cpu']:8.1f}{b['peak'] / GB:9.2f}"
            f"{(b['peak'] - r['baseline_rss']) / r['n']:7.0f}{r['held']['total'] / r['n']:11.0f}"
            f"{e['wall']:9.1f}{e['rows_per_s']:10,.0f}{e['peak'] / GB:9.2f}{s['wall']:8.1f}"
            f"{s['rows_per_s']:11,.0f}{f['rows_per_s']:12,.0f}{f['all_users_s']:12,.0f}"
        )
    print("B/int: bytes per interaction (peak RSS growth in the build; arrays held after it)")
    if len(results) < 2:
        return
    print()
    print("per size step: time ratios (wall / CPU) beside the interaction ratio;")
    print("equal means linear growth. Full ranking of all users grows with users x items")
    print(
        f"{'step':>25s}{'interactions':>13s}{'build':>14s}{'epoch':>14s}{'eval':>14s}"
        f"{'users x items':>15s}{'full, all users':>17s}"
    )
    for a, b in itertools.pairwise(results):
        ratios = "".join(
            f"{b[k]['wall'] / a[k]['wall']:7.2f}x/{b[k]['cpu'] / a[k]['cpu']:.2f}x"
            for k in ("build", "epoch", "sampled")
        )
        cells = b["users"] * b["items"] / (a["users"] * a["items"])
        print(
            f"{a['n']:>11,d} -> {b['n']:<10,d}{b['n'] / a['n']:12.2f}x{ratios}{cells:14.2f}x"
            f"{b['full']['all_users_s'] / a['full']['all_users_s']:16.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = lambda text: [int(s) for s in text.split(",")]  # noqa: E731
    parser.add_argument("--sizes", type=sizes, default="1000000,5000000,20000000")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: its)")
    parser.add_argument("--eval-negatives", type=int, default=999, help="sampled, per val user")
    parser.add_argument("--full-users", type=int, default=1000, help="val users fully ranked")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--model", default="deepfm")
    parser.add_argument(
        "--negatives", type=int, default=None, help="training negatives (default: the config's)"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        Path(args.result).write_text(json.dumps(measure(args.worker, args)))
        return

    if min(args.sizes) < 1:
        parser.error(f"expected --sizes of positive integers, got {args.sizes}")
    if not (ROOT / f"configs/{args.model}_movielens.yaml").exists():
        parser.error(f"expected a model with configs/<model>_movielens.yaml, got {args.model!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    print(environment(args))
    print(
        f"{args.model}: configs/{args.model}_movielens.yaml, batch "
        f"{args.batch_size or 'as configured'}, training negatives "
        f"{args.negatives or 'as configured'}; val: 1 + {args.eval_negatives} sampled "
        f"candidates, full ranking on {args.full_users:,} users",
        flush=True,
    )
    results = []  # one subprocess per size
    for n in args.sizes:
        start = time.perf_counter()
        result = run_size(n, args)
        print(f"  (subprocess: {time.perf_counter() - start:.1f} s in all)", flush=True)
        if result is not None:
            results.append(result)
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
