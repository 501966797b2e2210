"""Serving speed of the recommender pyfunc: in-process and through `mlflow models serve`.

    .venv/bin/python benchmarks/serving.py [--models deepfm xdeepfm] [--repeats 30] [--no-http]

For each model (its configs/<model>_movielens.yaml, full size; the weights are
untrained: they do not change the work) a recommender is saved with
`mlflow.pyfunc.save_model` and loaded back, then timed on:

  top-K     one user, k=10, over all 1,682 movies (the user's training items skipped)
  scores    10,000 random (user, movie) rows

through `pyfunc.predict` in-process ("pyfunc"), the bare `Recommender.predict`
("core": no MLflow schema enforcement), and, for the first model, HTTP POSTs
to a local `mlflow models serve` (JSON encode + request + parse included).
Medians (and 90th percentiles) of wall time over repeats, measured in
alternating rounds; in-process also the median CPU time of the process (the
work itself, without the wait for a core on a shared machine).
Target: top-K in-process under 20 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parent.parent
TOP_K_TARGET_MS = 20.0
NUM_SCORE_ROWS = 10_000


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - start)


def _cpu_timed(fn) -> tuple[float, float]:
    """(wall ms, CPU ms of this process): on a shared machine the CPU time is the
    work itself, the wall time adds the wait for a core."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return 1000.0 * (time.perf_counter() - wall), 1000.0 * (time.process_time() - cpu)


def _summary(samples: list[float]) -> str:
    p90 = float(np.percentile(samples, 90))
    return f"{statistics.median(samples):8.1f} ms (p90 {p90:7.1f})"


def build_recommender(model_name: str, directory: Path) -> str:
    """Save a full-size, untrained recommender of `model_name`; return its path."""
    import torch

    from ctr.config import load_config
    from ctr.models import create_model
    from ctr.training import build_data
    from experiments.serving import save_recommender

    config = load_config(ROOT / "configs" / f"{model_name}_movielens.yaml", [])
    adapter, schema, *_ = build_data(config)
    torch.manual_seed(config.seed)
    model = create_model(config.model_name, schema, config).eval()
    path = directory / model_name
    return save_recommender(path, model, adapter.preprocessor, adapter.train_interactions)


def requests() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    top_k = pd.DataFrame({"user_id": [196], "k": [10]})
    scores = pd.DataFrame(
        {
            "user_id": rng.integers(1, 944, NUM_SCORE_ROWS),
            "movie_id": rng.integers(1, 1683, NUM_SCORE_ROWS),
        }
    )
    return top_k, scores


def in_process(path: str, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall times, CPU times) in ms of each call."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(path)
    core = model.unwrap_python_model().recommender
    top_k, scores = requests()
    calls = {
        "top-K   pyfunc": lambda: model.predict(top_k),
        "top-K   core": lambda: core.predict(top_k),
        "scores  pyfunc": lambda: model.predict(scores),
        "scores  core": lambda: core.predict(scores),
    }
    for fn in calls.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            wall_ms, cpu_ms = _cpu_timed(fn)
            times[name].append(wall_ms)
            cpu[name].append(cpu_ms)
    return times, cpu


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return resp.read()


def over_http(path: str, repeats: int, workdir: Path) -> tuple[float, dict[str, list[float]]]:
    """(seconds until /ping answered, times) for a local `mlflow models serve`."""
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = workdir / "serve.log"
    command = [
        str(bin_dir / "mlflow"),
        *("models", "serve", "-m", path, "--env-manager", "local"),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            command, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the model server exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if time.perf_counter() - start > 180:
                    tail = log.read_text()[-3000:]
                    raise RuntimeError(f"no /ping answer after 180 s:\n{tail}") from None
                time.sleep(0.5)
        startup = time.perf_counter() - start
        top_k, scores = requests()
        split = {"columns": list(scores.columns), "data": scores.to_numpy().tolist()}
        bodies = {
            "top-K   HTTP records": json.dumps(
                {"dataframe_records": top_k.to_dict("records")}
            ).encode(),
            "scores  HTTP split": json.dumps({"dataframe_split": split}).encode(),
        }
        for body in bodies.values():  # warm-up
            _post(f"{url}/invocations", body)
        times: dict[str, list[float]] = {name: [] for name in bodies}
        for _ in range(repeats):
            for name, body in bodies.items():
                times[name].append(_timed(lambda b=body: _post(f"{url}/invocations", b)))
        return startup, times
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # mlflow and its uvicorn child
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deepfm"], help="Model names.")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-http", action="store_true", help="Skip the model server.")
    args = parser.parse_args()
    logging.getLogger("ctr.data.movielens").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    import torch

    print(
        f"torch threads: {torch.get_num_threads()} (a forward pass uses "
        f"{os.environ.get('CTR_SERVING_THREADS', '1')}); cpus: {os.cpu_count()}; "
        f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.models):
            path = build_recommender(name, Path(tmp))
            print(f"\n{name}")
            times, cpu = in_process(path, args.repeats)
            for label, samples in times.items():
                print(
                    f"  {label:22s} {_summary(samples)}   CPU {statistics.median(cpu[label]):6.1f} ms"
                )
            top_ms = times["top-K   pyfunc"]
            verdict = "meets" if statistics.median(top_ms) < TOP_K_TARGET_MS else "MISSES"
            print(f"  top-K in-process {verdict} the {TOP_K_TARGET_MS:.0f} ms target")
            if i == 0 and not args.no_http:
                startup, times = over_http(path, args.repeats, Path(tmp))
                print(f"  model server answered /ping after {startup:.1f} s")
                for label, samples in times.items():
                    print(f"  {label:22s} {_summary(samples)}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
