"""`ctr compare` and `ctr promote --dry-run` on an experiment of 1,000 runs.

    .venv/bin/python benchmarks/store.py [--runs 1000] [--dir /var/tmp/ctr-store-bench]
    .venv/bin/python benchmarks/store.py --uri http://127.0.0.1:5000   # a server already up

Starts `ctr server --backend postgres --dir DIR --port 0` (DIR: a fresh
directory under /tmp unless given; the system user postgres must be able to
enter it when run as root), fills the experiment `store-bench` with synthetic
finished runs until it has --runs of them, then times, best of --repeats:

  command     `ctr compare --experiment store-bench` (its default: the best 20
              runs; --all: every run; --top 10) and `ctr promote --experiment
              store-bench --dry-run` as subprocesses: what a user waits for,
              Python's start and imports included
  in-process  compare_runs + render (every run, and top=10), and
              promote_best_run(dry_run=True), in this process with its imports
              done: the store queries alone

Columns: wall seconds; CPU seconds of the caller (the command, or this
process); CPU seconds of the server (ctr server, MLflow's uvicorn, the
postmaster and its backends; only for a server this script started); and
their sum, the wall time to expect on an idle machine (the client waits for
each answer; loopback adds little). On a busy machine the wall time measures
the wait for a core instead.

Each synthetic run carries what a real `ctr train` run of its model logs (the
resolved config's params from configs/<model>_movielens.yaml, the tags, one
point per epoch for train_loss, lr, the timings and the val metrics, the
test_* and best_val_* metrics at the end) and a READY logged model `model` and
`recommender`, without artifacts; so compare and promote find and rank them
as real runs. Runs are logged with MlflowClient.log_batch from a few threads.
Target: under 5 s each. A kept --dir is reused: runs already there count.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPERIMENT = "store-bench"
MODELS = ("deepfm", "xdeepfm", "attention_deepfm", "fm", "lr")
TARGET_S = 5.0
EXPORT_PREFIX = "export MLFLOW_TRACKING_URI="
_RANKING = ("hr_at_5", "hr_at_10", "hr_at_20", "ndcg_at_5", "ndcg_at_10", "ndcg_at_20")


@dataclass
class Server:
    uri: str
    directory: Path | None = None  # ctr server --dir, when this script started it
    pid: int | None = None  # the ctr server process

    def cpu_seconds(self) -> float | None:
        """CPU time so far of everything serving: ctr server and its MLflow server
        (uvicorn), and the PostgreSQL postmaster with its backends (a daemon of its
        own); None for a server this script did not start."""
        if self.pid is None or self.directory is None:
            return None
        roots = [self.pid]
        pid_file = self.directory / "postgres" / "data" / "postmaster.pid"
        if pid_file.exists():
            roots.append(int(pid_file.read_text().split()[0]))
        return tree_cpu_seconds(roots)


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of `roots` and all their descendants, those that
    exited included (in their parents' cutime/cstime). Linux /proc."""
    parent, ticks = {}, {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        parent[int(proc.name)] = int(fields[1])
        ticks[int(proc.name)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    tree, grown = set(roots) & set(ticks), True
    while grown:
        more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= more
        grown = bool(more)
    return sum(ticks[pid] for pid in tree) / os.sysconf("SC_CLK_TCK")


@contextmanager
def ctr_server(directory: Path | None) -> Iterator[Server]:
    """`ctr server --backend postgres` on a free port, until the end of the block."""
    made = directory is None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="ctr-store-bench-", dir="/tmp")) / "srv"
        directory.parent.chmod(0o755)  # the system user postgres enters it under root
    directory.parent.mkdir(parents=True, exist_ok=True)
    out = directory.parent / f"{directory.name}.out"
    ctr = Path(sys.executable).parent / "ctr"
    with open(out, "w") as fh:
        proc = subprocess.Popen(
            [str(ctr), "server", "--backend", "postgres", "--dir", str(directory), "--port", "0"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 600
        uri = None
        while uri is None and time.monotonic() < deadline and proc.poll() is None:
            lines = out.read_text().splitlines()
            uri = next(
                (ln[len(EXPORT_PREFIX) :] for ln in lines if ln.startswith(EXPORT_PREFIX)), None
            )
            time.sleep(0.5)
        if uri is None:
            raise RuntimeError(f"ctr server printed no tracking URI:\n{out.read_text()[-3000:]}")
        yield Server(uri, directory, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        if made:
            shutil.rmtree(directory.parent, ignore_errors=True)


def real_params(model: str) -> dict[str, str]:
    """The params a `ctr train` run of `model` logs (experiments.tracking.run_params),
    from its config, without a trained model behind them."""
    from ctr.config import load_config
    from experiments.tracking import param_value, unused_config_sections

    config = load_config(ROOT / "configs" / f"{model}_movielens.yaml")
    unused = unused_config_sections(model)
    params = {
        key: param_value(value)
        for key, value in config.to_flat_dict().items()
        if key.split(".", 1)[0] not in unused
    }
    params.update(model=model, dataset=config.data.dataset, num_params="100000")
    params.update(torch_num_threads="1", torch_num_interop_threads="1")
    return params


def log_run(client, experiment_id: str, index: int, params: dict[str, str], epochs: int) -> None:
    """One finished synthetic run: params, per-epoch and final metrics, tags, models."""
    from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag

    rng = random.Random(index)
    model = params["model"]
    seed = str(index)
    run = client.create_run(
        experiment_id,
        run_name=f"{model}-{index}",
        tags={"model": model, "dataset": "movielens-100k", "device": "cpu", "cpu": "bench"},
    )
    run_id = run.info.run_id
    run_params = [Param(k, v) for k, v in {**params, "seed": seed}.items()]
    for start in range(0, len(run_params), 100):  # MLflow's limit per log_batch
        client.log_batch(run_id, params=run_params[start : start + 100])
    stamp = int(time.time() * 1000)
    quality = rng.uniform(0.02, 0.12)
    metrics, best = [], (-1.0, 1)
    for epoch in range(1, epochs + 1):
        ndcg = quality * (1 - 0.5**epoch) + rng.gauss(0, 0.002)
        values = {"train_loss": 0.7 / epoch, "lr": 1e-3, "epoch_seconds": 2.0}
        values.update(eval_seconds=0.5, val_auc=0.7 + ndcg, val_logloss=0.5 - ndcg)
        values.update({f"val_{k}": ndcg * (2 if "hr" in k else 1) for k in _RANKING})
        metrics += [Metric(k, v, stamp, epoch) for k, v in values.items()]
        best = max(best, (ndcg, epoch))
    ndcg, best_epoch = best
    final = {f"best_val_{k}": ndcg * (2 if "hr" in k else 1) for k in _RANKING}
    final.update({f"test_{k}": 0.9 * ndcg * (2 if "hr" in k else 1) for k in _RANKING})
    final.update(best_val_auc=0.7 + ndcg, best_val_logloss=0.5 - ndcg, test_auc=0.7 + ndcg)
    final.update(test_logloss=0.5 - ndcg, best_val_full_ndcg_at_10=0.7 * ndcg)
    final.update(best_val_full_hr_at_10=1.4 * ndcg, test_full_ndcg_at_10=0.6 * ndcg)
    final.update(test_full_hr_at_10=1.2 * ndcg, seconds_per_epoch=2.0)
    metrics += [Metric(k, v, stamp, best_epoch) for k, v in final.items()]
    metrics += [Metric("tracking_seconds_per_epoch", 0.05, stamp, 0)]
    client.log_batch(run_id, metrics=metrics)
    tags = {"best_epoch": str(best_epoch), "epochs_run": str(epochs), "stopped_early": "false"}
    tags["checkpoint_dir"] = f"checkpoints/{run_id}"
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    for name in ("model", "recommender"):
        logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.set_terminated(run_id, "FINISHED")


def populate(uri: str, runs: int, epochs: int, threads: int) -> tuple[int, float]:
    """Add synthetic runs until the experiment has `runs`; (runs added, seconds)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    have = 0
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        have += len(page)
        token = page.token
        if not token:
            break
    params = {model: real_params(model) for model in MODELS}
    todo = range(have, runs)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = pool.map(
            lambda i: log_run(client, experiment_id, i, params[MODELS[i % len(MODELS)]], epochs),
            todo,
        )
        for n, _ in enumerate(done, 1):
            if n % 100 == 0:
                print(f"  {have + n} runs", flush=True)
    return len(todo), time.perf_counter() - t0


@dataclass
class Timing:
    wall: float  # seconds, best of the repeats
    cpu: float  # CPU seconds of the caller (the command, or this process), best
    server_cpu: float | None  # CPU seconds of the server and its database, best

    def quiet_estimate(self) -> float:
        """What the wall time would be on an idle machine: the client waits for each
        answer, so its CPU and the server's add up (latency on loopback is small)."""
        return self.cpu + (self.server_cpu or 0.0)


def measure(call: Callable[[], object], server: Server, repeats: int, child: bool) -> Timing:
    """Time `call` (child=True: a subprocess, whose CPU shows in RUSAGE_CHILDREN)."""
    walls, cpus, server_cpus = [], [], []
    for _ in range(repeats):
        usage = resource.getrusage(resource.RUSAGE_CHILDREN if child else resource.RUSAGE_SELF)
        served = server.cpu_seconds()
        t0 = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN if child else resource.RUSAGE_SELF)
        cpus.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
        if served is not None:
            server_cpus.append(server.cpu_seconds() - served)
    return Timing(min(walls), min(cpus), min(server_cpus) if server_cpus else None)


def run_ctr(args: list[str], uri: str) -> str:
    """`ctr ARGS` against `uri`; its stdout."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    ctr = Path(sys.executable).parent / "ctr"
    proc = subprocess.run([str(ctr), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def time_all(server: Server, repeats: int) -> dict[str, Timing]:
    from mlflow import MlflowClient

    from experiments.compare import compare_runs, render
    from experiments.promote import promote_best_run

    client = MlflowClient(server.uri)
    compare = ["compare", "--experiment", EXPERIMENT]
    promote = ["promote", "--experiment", EXPERIMENT, "--dry-run"]
    print(run_ctr(promote, server.uri).strip().splitlines()[0])
    calls = {
        "ctr compare (command, the best 20)": (lambda: run_ctr(compare, server.uri), True),
        "ctr compare --all (command, all rows)": (
            lambda: run_ctr([*compare, "--all"], server.uri),
            True,
        ),
        "ctr compare --top 10 (command)": (
            lambda: run_ctr([*compare, "--top", "10"], server.uri),
            True,
        ),
        "ctr promote --dry-run (command)": (lambda: run_ctr(promote, server.uri), True),
        "compare_runs + render (in-process)": (
            lambda: render(compare_runs(EXPERIMENT, client=client)),
            False,
        ),
        "compare_runs top=10 (in-process)": (
            lambda: render(compare_runs(EXPERIMENT, top=10, client=client)),
            False,
        ),
        "promote_best_run dry run (in-process)": (
            lambda: promote_best_run(EXPERIMENT, dry_run=True, client=client),
            False,
        ),
    }
    return {name: measure(call, server, repeats, child) for name, (call, child) in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per synthetic run")
    parser.add_argument("--threads", type=int, default=8, help="threads that log the runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="ctr server --dir (kept)")
    parser.add_argument("--uri", default=None, help="a tracking server already running")
    args = parser.parse_args()

    started = ctr_server(args.dir) if args.uri is None else None
    server = Server(args.uri) if started is None else started.__enter__()
    try:
        print(f"tracking URI {server.uri}", flush=True)
        added, seconds = populate(server.uri, args.runs, args.epochs, args.threads)
        if added:
            print(f"logged {added} runs in {seconds:.0f} s ({added / seconds:.1f} runs/s)")
        results = time_all(server, args.repeats)
        print(f"\n{args.runs} runs in one experiment, best of {args.repeats} (seconds):")
        print(f"  {'':40s} {'wall':>7s} {'CPU':>7s} {'server':>7s} {'idle est.':>9s}")
        for name, t in results.items():
            flag = "" if t.quiet_estimate() < TARGET_S else f"  over the {TARGET_S:.0f} s target"
            server_cpu = "n/a" if t.server_cpu is None else f"{t.server_cpu:.2f}"
            print(
                f"  {name:40s} {t.wall:7.2f} {t.cpu:7.2f} {server_cpu:>7s} "
                f"{t.quiet_estimate():9.2f}{flag}"
            )
    finally:
        if started is not None:
            started.__exit__(None, None, None)


if __name__ == "__main__":
    main()
