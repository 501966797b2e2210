"""Faults and contention with real processes: `ctr train` killed by SIGKILL while it
writes a checkpoint, two `ctr promote` at once, eight `ctr train` at once on a
PostgreSQL-backed `ctr server`.

Kill points: inotify (tests/fswatch.py) reports the checkpoint's temporary file
(`.last.pt.XXXX.tmp`, save_checkpoint's temp + fsync + rename) the moment it is
created, and the test sends SIGKILL then, or a few milliseconds later. A
temporary file left behind afterwards proves the kill landed inside the write.
Each time, the files under the final names load (no half-written best.pt or
last.pt) and hold the checkpoint from before the write (or, when the rename was
done, the new one), and the next process resumes from what is left. These runs
are untracked (`--no-track`): the checkpoint files are what is tested.

The promotes race on three of the eight runs the PostgreSQL test trains.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctr.utils import load_checkpoint
from tests import fswatch
from tests.conftest import FAST_OVERRIDES, ROOT, VENV_BIN, subprocess_env
from tests.test_server import ctr_server, needs_postgres

NUM_EPOCHS = 5
LR_OVERRIDES = [*FAST_OVERRIDES, "training.num_threads=1"]

# (final name, its n-th write by the process, seconds from the temp file's creation
# to SIGKILL); the processes run one after the other, each resuming from what the
# one before left
KILL_POINTS = [
    ("last.pt", 2, 0.0),  # a fresh run, epoch 2's last.pt
    ("best.pt", 1, 0.0),  # a resumed run, copying best.pt into its directory
    ("last.pt", 1, 0.001),  # a resumed run, its first epoch's last.pt, 1 ms in
    ("last.pt", 1, 0.003),  # the same, later in the write (or after the rename)
]


def _final_name(temp: Path) -> str | None:
    """'last.pt' for save_checkpoint's temp file '.last.pt.k2j4x_.tmp', else None."""
    name = temp.name
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    return name[1 : -len(".tmp")].rsplit(".", 1)[0]


def _epoch(path: Path) -> int | None:
    """The epoch of the checkpoint at `path` (loaded whole), None when there is none."""
    return int(load_checkpoint(path)["epoch"]) if path.exists() else None


@dataclass
class Killed:
    directory: Path  # the process's checkpoint directory
    temp: Path  # the temporary file of the write it was killed in
    temp_left: bool  # the kill landed between the temp file's creation and the rename


def _train(root: Path, resume: Path | None, log: Path) -> subprocess.Popen:
    overrides = [
        *LR_OVERRIDES,
        f"training.num_epochs={NUM_EPOCHS}",
        f"training.checkpoint_dir={root}",
    ]
    if resume is not None:
        overrides.append(f"training.resume_from={resume}")
    with open(log, "w") as fh:
        return subprocess.Popen(
            [str(VENV_BIN / "ctr"), "train", "--model", "lr", "--no-track", "--override"]
            + overrides,
            env=subprocess_env(None),
            cwd=root,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def _kill_during_write(
    root: Path, resume: Path | None, target: str, nth: int, delay: float
) -> Killed:
    """Start `ctr train`, SIGKILL it `delay` s after its `nth` write of `target` begins."""
    root.mkdir()
    log = root.parent / f"{root.name}.log"
    with fswatch.TreeWatch(root) as watch:
        proc = _train(root, resume, log)
        writes: dict[str, int] = {}
        seen: set[str] = set()
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"ended before write {nth} of {target}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no write {nth} of {target}:\n{log.read_text()}"
            for path, kind in watch.events(timeout=0.5):
                final = _final_name(path)
                if final is None and kind == "listed" and path.name not in seen:
                    final = path.name  # its write began before the directory was watched
                if final is None or path.name in seen:
                    continue
                seen.add(path.name)
                writes[final] = writes.get(final, 0) + 1
                if final == target and writes[final] == nth:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    return Killed(path.parent, path, path.exists() and path != path.parent / target)


@pytest.mark.slow
@pytest.mark.skipif(not fswatch.available(), reason="needs Linux inotify")
def test_train_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    resume: Path | None = None
    start = 0  # the epoch the next process starts from
    source_best: int | None = None  # the epoch of best.pt beside `resume`
    inside = []
    for i, (target, nth, delay) in enumerate(KILL_POINTS):
        killed = _kill_during_write(tmp_path / f"kill{i}", resume, target, nth, delay)
        inside.append(killed.temp_left)
        # what the write would have made, and what was there before it
        if target == "last.pt":
            new, before = start + nth, (start + nth - 1 if nth > 1 else None)
        else:  # a fresh run's first best.pt is epoch 1's; a resumed run's, the copied one
            new, before = (source_best if resume else 1), None
        files = {name: _epoch(killed.directory / name) for name in ("last.pt", "best.pt")}
        if killed.temp_left:  # killed inside the write: the file from before it, whole
            assert files[target] == before, (i, killed, files)
        else:  # the rename was done (a kill delayed on a busy machine may come later still)
            assert files[target] is not None and files[target] >= new, (i, killed, files)
        leftovers = [p.name for p in killed.directory.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) <= 1 and all(_final_name(Path(n)) for n in leftovers), leftovers
        if files["last.pt"] is not None:  # resume from the newest whole checkpoint
            resume, start = killed.directory / "last.pt", files["last.pt"]
            source_best = _epoch(killed.directory / "best.pt")
        assert resume is not None and _epoch(resume) == start  # what the next one resumes from
    # with inotify a kill without delay lands inside the write (the temp file is left
    # behind) unless the machine is very busy; one of the two at least must have
    assert inside[0] or inside[1], inside

    final = tmp_path / "final"
    final.mkdir()
    log = tmp_path / "final.log"
    proc = _train(final, resume, log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    assert f"resumed from {resume} at epoch {start}" in log.read_text()
    assert "lr: best epoch" in log.read_text() and "Traceback" not in log.read_text()
    (directory,) = final.iterdir()
    last = load_checkpoint(directory / "last.pt")
    assert last["epoch"] == NUM_EPOCHS
    assert [h["epoch"] for h in last["history"]] == list(range(1, NUM_EPOCHS + 1))
    assert _epoch(directory / "best.pt") == last["best_epoch"]


# ------------------------------------------------------------ PostgreSQL server
N_PARALLEL = 8
N_EPOCHS_PARALLEL = 2
EXPERIMENT = "ctr-faults-parallel"
EPOCH_METRICS = (
    "train_loss",
    "lr",
    "epoch_seconds",
    "eval_seconds",
    "val_auc",
    "val_logloss",
    *(f"val_{m}_at_{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)),
)


@dataclass
class ParallelRuns:
    uri: str
    returncodes: list[int]
    logs: list[str]
    seconds: float  # wall time of the N trainings


@pytest.fixture(scope="module")
def parallel_runs() -> Iterator[ParallelRuns]:
    """N `ctr train` (lr, 2 epochs, seeds 0..N-1) started at once against a
    PostgreSQL-backed `ctr server` of its own."""
    base = Path(tempfile.mkdtemp(prefix="ctr-faults-", dir="/tmp"))
    base.chmod(0o755)  # the system user postgres enters it under root (test_server.py)
    overrides = [
        *LR_OVERRIDES,
        f"training.num_epochs={N_EPOCHS_PARALLEL}",
        f"training.checkpoint_dir={base / 'checkpoints'}",
    ]
    try:
        with ctr_server(base / "srv", "--backend", "postgres") as server:
            logs = [base / f"train{i}.log" for i in range(N_PARALLEL)]
            t0 = time.perf_counter()
            procs = []
            for i, log in enumerate(logs):
                with open(log, "w") as fh:
                    procs.append(
                        subprocess.Popen(
                            [str(VENV_BIN / "ctr"), "train", "--model", "lr", "--seed", str(i)]
                            + ["--experiment-name", EXPERIMENT, "--run-name", f"p{i}"]
                            + ["--override", *overrides],
                            env=subprocess_env(server.uri),
                            cwd=ROOT,
                            stdout=fh,
                            stderr=subprocess.STDOUT,
                        )
                    )
            codes = [proc.wait(timeout=900) for proc in procs]
            seconds = time.perf_counter() - t0
            yield ParallelRuns(server.uri, codes, [log.read_text() for log in logs], seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@needs_postgres
def test_eight_runs_at_once_on_postgres_are_all_complete(parallel_runs: ParallelRuns):
    from mlflow import MlflowClient

    for i, (code, log) in enumerate(
        zip(parallel_runs.returncodes, parallel_runs.logs, strict=True)
    ):
        assert code == 0, f"run {i} exited {code}:\n{log[-4000:]}"
        assert "Traceback" not in log, log[-4000:]
    client = MlflowClient(parallel_runs.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"p{i}" for i in range(N_PARALLEL)]
    assert len({r.info.run_id for r in runs}) == N_PARALLEL
    assert sorted(int(r.data.params["seed"]) for r in runs) == list(range(N_PARALLEL))
    steps = list(range(1, N_EPOCHS_PARALLEL + 1))
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        for key in EPOCH_METRICS:  # one point per epoch: none lost, none twice
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == steps, (run.info.run_name, key, history)
        best_epoch = int(run.data.tags["best_epoch"])
        for key in ("best_val_ndcg_at_10", "test_ndcg_at_10"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [best_epoch], (run.info.run_name, key)


def _promote(uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "ctr"), "promote", "--experiment", EXPERIMENT, *args],
        env=subprocess_env(uri),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@needs_postgres
def test_two_promotes_at_once_take_turns(parallel_runs: ParallelRuns):
    """Two `ctr promote --force` of different runs at once: the one that ends as
    champion names the other's version `previous`, not the holder both found.
    (Before the promotion lock both read version 1 as the holder, and `previous`
    ended on it.)"""
    from mlflow import MlflowClient

    from experiments.promote_lock import lock_name

    uri = parallel_runs.uri
    name = "ctr-faults-race"
    first = _promote(uri, "--model-name", name, "--filter", "params.seed = '0'")
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    racers = {
        seed: _promote(uri, "--model-name", name, "--filter", f"params.seed = '{seed}'", "--force")
        for seed in ("1", "2")
    }
    outputs = {seed: proc.communicate(timeout=300)[0] for seed, proc in racers.items()}
    for seed, proc in racers.items():
        assert proc.returncode == 0, outputs[seed]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    seed_of = {
        r.info.run_id: r.data.params["seed"]
        for r in client.search_runs([experiment.experiment_id], max_results=100)
    }
    for model in (name, f"{name}-recommender"):
        versions = client.search_model_versions(f"name = '{model}'")
        by_seed = {seed_of[v.run_id]: v.version for v in versions}
        assert len(versions) == 3 and sorted(by_seed) == ["0", "1", "2"], model
        champions = [  # (search_model_versions leaves the aliases out)
            v.version
            for v in versions
            if "champion" in client.get_model_version(model, v.version).aliases
        ]
        assert len(champions) == 1, (model, champions)
        (champion,) = champions
        winner = next(s for s, v in by_seed.items() if v == champion)
        assert winner in ("1", "2")
        other = "2" if winner == "1" else "1"
        aliases = client.get_registered_model(model).aliases
        assert aliases == {"champion": champion, "previous": by_seed[other]}, (model, aliases)
    # the later promote compared with, and demoted, the earlier one's version
    winner_out = outputs[winner]
    assert f"version {client.get_registered_model(name).aliases['previous']} (" in winner_out
    assert client.search_registered_models(f"name = '{lock_name(name)}'") == []
