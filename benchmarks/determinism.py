"""What a seeded run's numbers depend on: fingerprints of short DeepFM runs.

    python benchmarks/determinism.py [--epochs 3] [--seed 1] [--only a,b,...]
    python benchmarks/determinism.py --one [--mode inprocess|spawn] [--threads 1] [--epochs 3]
    python benchmarks/determinism.py --full [--jobs 2 | --jobs 1 --threads 1] [--seed 1]

Each fingerprint trains configs/deepfm_movielens.yaml with `seed`, `--epochs`
epochs, `training.full_ranking=false` and `training.test_full_ranking=false`,
untracked, through `ctr.training.fit` (as `ctr results` does), and records with
full precision (repr):

- the hash of the initial weights (equal unless something before training
  consumed the global RNG or changed the init),
- a kernel probe, run after training: logits, loss and gradients of the
  freshly seeded model on the first 4096 rows of epoch 1 in eval mode (no
  dropout); it differs when a single forward/backward pass rounds differently,
- per epoch: the train loss, the val NDCG@10 and a hash of the weights,
- the test NDCG@10 of the best epoch.

`--one` prints one fingerprint as a JSON line. `--mode inprocess` trains in
the process itself, like `ctr results --jobs 1`; `--mode spawn` trains in a
worker of a spawned `ProcessPoolExecutor(2)`, like `ctr results --jobs 2`
(`experiments.results.run_results`: the worker adds
`training.num_threads=<threads>` to the overrides). `--probe-only` skips the
training (seconds instead of minutes).

Without `--one`, every condition below runs in a fresh interpreter, one after
the other (so environment variables read at import time take effect), and a
table says which conditions give the numbers of (a):

    a       in-process, 1 thread
    a2      (a) again: repeatability
    b       spawned worker, 1 thread (the `make results` path)
    c       in-process, 2 threads
    aten    (a) with ATEN_CPU_CAPABILITY=default (torch's own kernels without SIMD)
    avx2    (a) with ATEN_CPU_CAPABILITY=avx2 (on an AVX2 machine: the native choice)
    mkl     (a) with MKL_ENABLE_INSTRUCTIONS=SSE4_2 (MKL's GEMM kernels limited to SSE4.2)
    cbwr    (a) with MKL_CBWR=COMPATIBLE (MKL's reproducible-across-CPUs code path)
    onednn  (a) with ONEDNN_MAX_CPU_ISA=SSE41

`--full [--jobs 2]` trains one seed to the end through
`experiments.results.run_results` (jobs=2: the `make results` worker path;
`--jobs 1 --threads N`: in-process with N threads) and prints its summary
beside the stored row of results/results.json, writing nothing.

Variables set around the command reach every condition (on an AVX-512
machine, `ATEN_CPU_CAPABILITY=avx2 python benchmarks/determinism.py` runs the
matrix with an AVX2 machine's kernels; `torch.backends.cpu.get_cpu_capability()`
names the default, `MKL_VERBOSE=1` the code path MKL takes).

Measured on a 2-core AMD EPYC (torch 2.13.0, ATen AVX2; MKL 2024 takes its
generic "Intel Architecture processors" path on this CPU), seed 1, 3 epochs:
a, a2, b, c and onednn give the same fingerprint (the same weights after every
epoch: the worker path, a second run and a second thread change nothing here);
aten changes even the initial weights (torch's random fills are vectorized)
and cbwr the first forward pass, and after 3 epochs their test NDCG@10 is
0.0341 and 0.0303 against 0.0331. With --probe-only, avx2 and mkl match a.
`--full` (seed 1, jobs 2) reproduced the seed-1 DeepFM row of
results/results.json in every digit (best epoch 23, test NDCG@10
0.07475209888691327); with MKL_CBWR=COMPATIBLE set around it, the same run
stopped at best epoch 11 with best val NDCG@10 0.1114 and test NDCG@10 0.0667.
Those figures are of the row trained with nn.Dropout and torch's for-each
Adam, before `dnn.fast_dropout` and `training.fused_optimizer` became the
defaults; `--full` compares with the row results/results.json holds now,
which was retrained with both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "deepfm_movielens.yaml"
ENV_KEYS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)

# name -> (mode, threads, extra environment)
CONDITIONS: dict[str, tuple[str, int, dict[str, str]]] = {
    "a": ("inprocess", 1, {}),
    "a2": ("inprocess", 1, {}),
    "b": ("spawn", 1, {}),
    "c": ("inprocess", 2, {}),
    "aten": ("inprocess", 1, {"ATEN_CPU_CAPABILITY": "default"}),
    "avx2": ("inprocess", 1, {"ATEN_CPU_CAPABILITY": "avx2"}),
    "mkl": ("inprocess", 1, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}),
    "cbwr": ("inprocess", 1, {"MKL_CBWR": "COMPATIBLE"}),
    "onednn": ("inprocess", 1, {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
}


def _hash(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _weights_hash(model) -> str:
    state = model.state_dict()
    return _hash(state[k] for k in sorted(state))


def _overrides(seed: int, epochs: int, threads: int | None) -> list[str]:
    overrides = [
        f"seed={seed}",
        f"training.num_epochs={epochs}",
        "training.full_ranking=false",
        "training.test_full_ranking=false",
    ]
    if threads is not None:
        overrides.append(f"training.num_threads={threads}")
    return overrides


def _probe(config) -> dict:
    """One eval-mode forward/backward of the freshly seeded model on fixed rows."""
    import torch
    import torch.nn.functional as F

    from ctr.models import create_model
    from ctr.training import build_data
    from ctr.utils import seed_everything

    _, schema, train_ds, _, _ = build_data(config)
    if config.training.num_threads is not None:
        torch.set_num_threads(config.training.num_threads)
    seed_everything(config.seed)
    model = create_model(config.model_name, schema, config)
    model.eval()
    batch, labels = train_ds.sample_epoch(1, config.seed).take(torch.arange(4096))
    logits = model(batch).squeeze(-1)  # (4096,)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return {
        "probe_loss": repr(float(loss)),
        "probe_logits": _hash([logits]),
        "probe_grads": _hash(grads),
    }


def fingerprint(seed: int, epochs: int, threads: int | None, probe_only: bool = False) -> dict:
    """Train (unless probe_only) and return the fingerprint; runs in the calling process."""
    import torch

    from ctr.config import load_config
    from ctr.training import Callback, fit

    config = load_config(CONFIG, _overrides(seed, epochs, threads))
    out: dict = {
        "pid": os.getpid(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }
    if probe_only:
        out.update(_probe(config))
        out["threads"] = torch.get_num_threads()
        return out

    class Record(Callback):
        def __init__(self) -> None:
            self.model = None
            self.epochs: list[dict] = []

        def on_train_begin(self, context) -> None:
            self.model = context.model
            out["init_weights"] = _weights_hash(context.model)
            out["threads"] = torch.get_num_threads()
            out["interop_threads"] = torch.get_num_interop_threads()
            out["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()

        def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
            self.epochs.append(
                {
                    "epoch": epoch,
                    "train_loss": repr(metrics["train_loss"]),
                    "val_ndcg_at_10": repr(metrics["val_ndcg_at_10"]),
                    "weights": _weights_hash(self.model),
                }
            )

    record = Record()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(config, callbacks=[record], checkpoint_dir=tmp)
    out["epochs"] = record.epochs
    out["best_epoch"] = result.summary["best_epoch"]
    out["test_ndcg_at_10"] = repr(result.summary["test_ndcg_at_10"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out.update(_probe(config))  # after training, so the training path is exactly fit's
    return out


def fingerprint_in_worker(seed: int, epochs: int, threads: int, probe_only: bool) -> dict:
    """`fingerprint` in a spawned worker, the way run_results hands out runs (jobs > 1)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fingerprint, seed, epochs, threads, probe_only).result()


def full_run(seed: int, jobs: int, threads: int) -> None:
    """One DeepFM seed trained in full by `run_results` itself, beside results/results.json.

    jobs=2 is the `make results` path (a spawned worker with one thread; the
    second worker stays idle); jobs=1 trains in this process with
    `training.num_threads=<threads>`, as `ctr results --jobs 1 --override
    training.num_threads=<threads>` does. Nothing is written.
    """
    from experiments.results import run_results

    overrides = ["training.full_ranking=false"]
    if jobs <= 1:
        overrides.append(f"training.num_threads={threads}")
    outcome = run_results(
        ["deepfm"], [seed], config_dir=ROOT / "configs", overrides=overrides, jobs=jobs
    )
    run = outcome["runs"]["deepfm"][0]
    saved = json.loads((ROOT / "results" / "results.json").read_text())
    stored = next((r for r in saved["runs"]["deepfm"] if r["seed"] == seed), {})
    print(f"| key | this run | results/results.json (seed {seed}) | equal |")
    print("|---|---|---|---|")
    for key in sorted(k for k in run if k.startswith(("test_", "best_")) or k == "epochs_run"):
        print(f"| {key} | {run[key]!r} | {stored.get(key)!r} | {run[key] == stored.get(key)} |")
    print(json.dumps(run))


def _summary_key(fp: dict) -> tuple:
    """What must match for two runs to count as the same numbers."""
    return (
        fp["init_weights"] if "init_weights" in fp else None,
        fp["probe_loss"],
        fp["probe_logits"],
        fp["probe_grads"],
        tuple((e["train_loss"], e["val_ndcg_at_10"], e["weights"]) for e in fp.get("epochs", [])),
        fp.get("test_ndcg_at_10"),
    )


def run_matrix(names: list[str], seed: int, epochs: int, probe_only: bool) -> None:
    results: dict[str, dict] = {}
    for name in names:
        mode, threads, extra = CONDITIONS[name]
        env = {**os.environ, **extra}
        cmd = [
            sys.executable,
            __file__,
            "--one",
            f"--mode={mode}",
            f"--threads={threads}",
            f"--seed={seed}",
            f"--epochs={epochs}",
        ]
        if probe_only:
            cmd.append("--probe-only")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"condition {name} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        fp = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = fp
        print(f"{name}: {json.dumps(fp)}", flush=True)
    reference = names[0]
    print()
    print(
        f"| condition | cpu capability | threads | probe loss | epoch {epochs} train loss "
        f"| epoch {epochs} val NDCG@10 | weights | test NDCG@10 | same as {reference} |"
    )
    print("|---" * 9 + "|")
    ref_key = _summary_key(results[reference])
    for name, fp in results.items():
        last = fp["epochs"][-1] if fp.get("epochs") else {}
        same = "yes" if _summary_key(fp) == ref_key else "no"
        extra = " ".join(f"{k}={v}" for k, v in CONDITIONS[name][2].items())
        label = f"{name} ({CONDITIONS[name][0]}{', ' + extra if extra else ''})"
        print(
            f"| {label} | {fp['cpu_capability']} | {fp['threads']} | {fp['probe_loss']} "
            f"| {last.get('train_loss', '-')} | {last.get('val_ndcg_at_10', '-')} "
            f"| {last.get('weights', '-')} | {fp.get('test_ndcg_at_10', '-')} | {same} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", action="store_true", help="Print one fingerprint as JSON.")
    parser.add_argument("--mode", choices=["inprocess", "spawn"], default="inprocess")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--probe-only", action="store_true", help="Skip the training.")
    parser.add_argument(
        "--full",
        action="store_true",
        help="Train one seed in full through run_results and compare with results/results.json.",
    )
    parser.add_argument("--jobs", type=int, default=2, help="With --full: run_results' jobs.")
    parser.add_argument(
        "--only", default=",".join(CONDITIONS), help="Comma-separated conditions to run."
    )
    args = parser.parse_args()
    if args.full:
        full_run(args.seed, args.jobs, args.threads)
        return
    if args.one:
        if args.mode == "spawn":
            fp = fingerprint_in_worker(args.seed, args.epochs, args.threads, args.probe_only)
        else:
            fp = fingerprint(args.seed, args.epochs, args.threads, args.probe_only)
        print(json.dumps(fp))
        return
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise SystemExit(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    run_matrix(names, args.seed, args.epochs, args.probe_only)


if __name__ == "__main__":
    main()
