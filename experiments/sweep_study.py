"""A sweep's Optuna side: its storage, its study, and the locks around them.

    study, new = open_study("deepfm", storage, "maximize", definition)
    study = load_study(spec, worker)   # in a trial process: the study with its sampler

The storage is an Optuna RDB database of the sweep's own (default
sweeps/<name>.db, SQLite), never MLflow's. The study's user attrs hold the
sweep's definition (model, tuning seed, monitor and hashes of the base config
and of the search space): a continued sweep must match it, or its trials would
not compare. Locks (flock, one machine): sweeps/<name>.lock keeps a second
`ctr sweep` of the same name out; sweeps/<name>.ask.lock makes "is the budget
spent? else ask for a trial" one step across the trial processes, so a sweep
runs exactly its budget.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.errors import CTRError
from ctr.utils import get_logger
from experiments.search_space import SearchSpace

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

logger = get_logger("experiments.sweep")

SWEEP_DIR = Path("sweeps")
TPE_STARTUP_TRIALS = 8  # random trials before TPE models the space


class SweepError(CTRError):
    """Bad `ctr sweep` input, or a sweep that cannot continue as asked."""


@dataclass(frozen=True)
class SweepSpec:
    """Everything a trial process needs (picklable: it crosses to spawned workers)."""

    name: str
    model: str
    config_path: str | None
    overrides: tuple[str, ...]
    space: SearchSpace
    seed: int
    storage: str
    experiment_id: str
    parent_run_id: str
    direction: str
    jobs: int
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    lock_dir: str


def default_storage(name: str, sweep_dir: str | Path = SWEEP_DIR) -> str:
    """sqlite:///<abs sweep_dir>/<name>.db, creating the directory (ignored by git)."""
    directory = Path(sweep_dir).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Optuna studies of `ctr sweep`\n*\n")
    return f"sqlite:///{directory / name}.db"


def lock_directory(storage: str) -> Path:
    """Where the sweep's lock files go: beside a SQLite storage, else in sweeps/."""
    from experiments.store import sqlite_path

    db = sqlite_path(storage)
    return db.parent if db is not None else SWEEP_DIR.absolute()


def check_storage(storage: str, tracking_uri: str) -> None:
    from experiments.store import sqlite_path

    ours, theirs = sqlite_path(storage), sqlite_path(tracking_uri)
    if storage == tracking_uri or (ours is not None and ours == theirs):
        raise SweepError(
            f"the Optuna storage {storage} is MLflow's tracking store; give the sweep a "
            f"database of its own (the default is sweeps/<name>.db)"
        )


@contextmanager
def flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` for the block; yields False if `blocking` is off and
    another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def rdb_storage(url: str):
    import optuna

    # SQLite lets one writer in at a time: wait for it rather than fail at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def load_study(spec: SweepSpec, worker: int = 0) -> optuna.Study:
    """The sweep's study, its TPE sampler seeded from (seed, trials so far, worker): a
    rerun or a second worker does not replay the draws of the first."""
    import optuna

    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_epochs
    )
    study = optuna.load_study(
        study_name=spec.name, storage=rdb_storage(spec.storage), pruner=pruner
    )
    study.sampler = optuna.samplers.TPESampler(
        seed=spec.seed * 1_000_003 + finished_count(study) * 101 + worker,
        n_startup_trials=TPE_STARTUP_TRIALS,
        constant_liar=spec.jobs > 1,  # parallel workers avoid each other's running points
    )
    return study


def finished_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=done))


# config keys that say where and how fast a trial runs, not what it learns: a continued
# sweep may change them
_RUNTIME_KEYS = ("checkpoint_dir", "num_threads", "device", "eval_batch_size")


def sweep_definition(config, space: SearchSpace, seed: int) -> dict[str, Any]:
    """What a continued sweep must share with its beginning."""
    raw = config.model_dump(mode="json")
    for key in _RUNTIME_KEYS:
        raw["training"].pop(key)
    text = json.dumps(raw, sort_keys=True)
    return {
        "model": config.model_name,
        "seed": seed,
        "monitor": config.training.monitor,
        "base_config_sha": hashlib.sha256(text.encode()).hexdigest()[:16],
        "space_sha": space.fingerprint(),
    }


def open_study(name: str, storage: str, direction: str, definition: dict[str, Any]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=rdb_storage(storage), direction=direction, load_if_exists=True
    )
    held = study.user_attrs.get("definition")
    if held is None:
        study.set_user_attr("definition", definition)
        study.set_user_attr("monitor", definition["monitor"])
    elif held != definition:
        changed = ", ".join(k for k in definition if held.get(k) != definition[k])
        raise SweepError(
            f"sweep {name!r} ({storage}) began with another {changed} ({held}); continue it "
            f"with the same model, config, overrides, --seed and search space, or give this "
            f"one a new --name"
        )
    return study


def fail_stale_trials(study, client: MlflowClient) -> None:
    """Trials left RUNNING by a killed sweep (no other process runs this sweep: the
    sweep lock says so): FAIL in Optuna, their MLflow runs KILLED."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "sweep_state", "failed")
            client.set_terminated(run_id, "KILLED")
        logger.info("trial %d was left running by an earlier sweep: marked failed", trial.number)
