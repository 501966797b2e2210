"""Hyper-parameter sweeps with Optuna, tracked in MLflow (`ctr sweep`).

    result = run_sweep("deepfm", trials=24, jobs=2)
    result.best_value, result.best_values  # the best trial's validation monitor and config

One sweep = one Optuna study and one MLflow parent run, with a nested run per
trial (experiments.sweep_trial, experiments.sweep_runs):

- the space is the model's search space (experiments.search_space); a new
  sweep's first trial is the base config itself, where its values lie in the
  space, so a sweep never ends worse than the config it started from;
- a TPE sampler, seeded, and a median pruner on the per-epoch monitor;
- trials use one tuning seed (default 0), never a reporting seed (1, 2, 3),
  and are chosen and pruned on validation only: the test split is not scored;
- Optuna's storage is its own SQLite file, sweeps/<name>.db (or --storage),
  never MLflow's database. Running the same name again continues the sweep:
  the same study and the same parent run, found by its tags, if the model,
  base config, seed and search space are those it began with;
- `jobs` trials run at once in separate processes (one torch thread each),
  sharing the study; each process tracks to the same MLflow URI (a `ctr
  server` when MLFLOW_TRACKING_URI names one, else ./mlflow.db, which
  experiments.store makes safe for parallel starts). A lock on
  sweeps/<name>.lock keeps a second `ctr sweep` of the same name out.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.errors import CTRError
from ctr.utils import get_logger
from experiments.sweep_runs import TAG_DIMENSIONS, TAG_MODEL, TAG_MONITOR, TAG_ROLE, TAG_SWEEP
from experiments.sweep_study import (
    SweepError,
    SweepSpec,
    check_storage,
    default_storage,
    fail_stale_trials,
    finished_count,
    flock,
    load_study,
    lock_directory,
    open_study,
    sweep_definition,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = get_logger("experiments.sweep")

SWEEP_EXPERIMENT = "movielens-100k-sweeps"
REPORTING_SEEDS = (1, 2, 3)  # the seeds of the results table: never tuned on
DEFAULT_TUNING_SEED = 0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    experiment_name: str
    storage: str
    monitor: str
    trials_run: int
    counts: dict[str, int] = field(default_factory=dict)
    best_trial: int | None = None
    best_value: float | None = None
    best_run_id: str | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    best_overrides: list[str] = field(default_factory=list)


def check_tuning_seed(seed: int) -> None:
    if seed in REPORTING_SEEDS:
        raise SweepError(
            f"seed {seed} is a reporting seed ({', '.join(map(str, REPORTING_SEEDS))}: the "
            f"results table trains the chosen configs with them); tune with another seed, "
            f"e.g. --seed {DEFAULT_TUNING_SEED}"
        )


def _work(spec: SweepSpec, worker: int, target: int, deadline: float | None) -> int:
    """Run trials until the study holds `target` trials or `deadline` passes; return how
    many this process ran. Trial errors that are bad input (CTRError: a diverged loss)
    fail the trial and the sweep goes on; anything else fails it and is raised, and
    so does a tracking server that failed (the next trial would fail the same way)."""
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from experiments.store import prepare_tracking_store
    from experiments.sweep_runs import record_best
    from experiments.sweep_trial import run_trial
    from experiments.tracking_errors import TrackingFailedError
    from experiments.train import check_tracking_server

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials log their own lines
    prepare_tracking_store(check_tracking_server())
    client = MlflowClient()
    study = load_study(spec, worker)
    ran = 0
    while deadline is None or time.time() < deadline:
        with flock(Path(spec.lock_dir) / f"{spec.name}.ask.lock"):  # one budget, exactly
            if finished_count(study) >= target:
                break
            trial = study.ask()
        ran += 1
        try:
            value = run_trial(spec, trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except TrackingFailedError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except CTRError as exc:
            logger.warning("trial %d failed: %s", trial.number, exc)
            study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
        record_best(client, spec.parent_run_id, study, spec.space)
    return ran


def _parent_run(client: MlflowClient, study, experiment_id: str, space, config, storage):
    """(run id, experiment id) of the sweep's parent run: the run the study recorded,
    found again by its tags (in any experiment), or a new run in `experiment_id`. A
    parent of the same name that the study did not start is refused: its trials and
    this study's would mix under one parent."""
    from mlflow.entities import Param

    from ctr.config import dump_config
    from experiments.sweep_runs import sweep_parents

    name = study.study_name
    recorded = study.user_attrs.get("mlflow_parent_run_id")
    parents = sweep_parents(client, name)
    for parent in parents:
        if parent.info.run_id == recorded:
            client.update_run(parent.info.run_id, status="RUNNING")
            return parent.info.run_id, parent.info.experiment_id
    if parents:
        raise SweepError(
            f"MLflow holds a sweep named {name!r} (parent run {parents[0].info.run_id}) that "
            f"the Optuna storage {storage} did not start: continuing would mix the trials of "
            f"two studies; pass --storage with that sweep's database, or another --name"
        )
    if recorded:
        logger.warning(
            "the parent run %s of sweep %s is not in this tracking store (was the sweep "
            "tracked elsewhere?); its next trials go under a new parent run",
            recorded,
            name,
        )
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            TAG_SWEEP: name,
            TAG_ROLE: "parent",
            TAG_MODEL: config.model_name,
            TAG_MONITOR: config.training.monitor,
            TAG_DIMENSIONS: json.dumps(list(space.dimensions)),
            "sweep_storage": storage,
        },
    )
    run_id = run.info.run_id
    study.set_user_attr("mlflow_parent_run_id", run_id)
    definition = study.user_attrs["definition"]
    client.log_batch(
        run_id,
        params=[Param(f"sweep_{k}", str(v)) for k, v in definition.items() if k != "model"],
    )
    client.log_text(run_id, dump_config(config), "sweep/base_config.yaml")
    import yaml

    client.log_text(
        run_id, yaml.safe_dump(space.to_dict(), sort_keys=False), "sweep/search_space.yaml"
    )
    return run_id, experiment_id


def run_sweep(
    model: str,
    trials: int,
    *,
    name: str | None = None,
    jobs: int = 1,
    timeout: float | None = None,
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    seed: int = DEFAULT_TUNING_SEED,
    search_dir: str | None = None,
    storage: str | None = None,
    experiment_name: str = SWEEP_EXPERIMENT,
    enqueue: Sequence[Sequence[str]] = (),
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 5,
    total: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run `trials` more trials of sweep `name` (default: the model's name); with
    `total`, run only as many as bring it to `trials` in all. Returns the best trial.

    enqueue: trials to run first, each a list of 'KEY=VALUE' for some dimensions (the
    others are sampled). Raises SweepError / SearchSpaceError / ConfigError before
    anything runs when the input is bad.
    """
    import mlflow
    from mlflow import MlflowClient

    from experiments.search_space import load_search_space
    from experiments.store import prepare_tracking_store, retry_when_locked
    from experiments.sweep_runs import record_summary
    from experiments.tracking_errors import TrackingFailedError
    from experiments.train import check_tracking_server, load_training_config

    name = name or model
    if not _NAME.match(name):
        raise SweepError(f"expected a sweep name of letters, digits, '.', '_', '-', got {name!r}")
    check_tuning_seed(seed)
    if trials < 0 or jobs < 1:
        raise SweepError(f"expected trials >= 0 and jobs >= 1, got {trials} and {jobs}")
    if any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
        raise SweepError("the sweep sets the seed: pass --seed, not a seed= override")
    config = load_training_config(config_path, [*overrides, f"seed={seed}"], model)
    space = load_search_space(model, config, search_dir)
    clash = sorted({o.split("=", 1)[0].strip() for o in overrides} & space.config_keys())
    if clash:
        raise SweepError(
            f"the overrides set {clash}, which the search space tunes; drop them, or search "
            f"a space without them (--search-dir)"
        )
    points = [space.parse_point(pairs) for pairs in enqueue]
    uri = prepare_tracking_store(check_tracking_server())
    storage = storage or default_storage(name)
    check_storage(storage, uri)
    lock_dir = lock_directory(storage)
    direction = "maximize" if config.training.monitor_mode == "max" else "minimize"
    with flock(lock_dir / f"{name}.lock", blocking=False) as held:
        if not held:
            raise SweepError(f"sweep {name!r} is running in another process; wait for it")
        study = open_study(name, storage, direction, sweep_definition(config, space, seed))
        client = MlflowClient()
        fail_stale_trials(study, client)
        if not study.get_trials(deepcopy=False):  # a new sweep starts from the config itself
            study.enqueue_trial(space.encode(space.baseline(config)))
        for point in points:
            study.enqueue_trial(space.encode(point), skip_if_exists=True)
        experiment_id = retry_when_locked(mlflow.set_experiment, experiment_name).experiment_id
        parent, experiment_id = _parent_run(client, study, experiment_id, space, config, storage)
        experiment_name = client.get_experiment(experiment_id).name
        spec = SweepSpec(
            name=name,
            model=model,
            config_path=str(config_path) if config_path else None,
            overrides=tuple(overrides),
            space=space,
            seed=seed,
            storage=storage,
            experiment_id=experiment_id,
            parent_run_id=parent,
            direction=direction,
            jobs=jobs,
            pruner_startup_trials=pruner_startup_trials,
            pruner_warmup_epochs=pruner_warmup_epochs,
            lock_dir=str(lock_dir),
        )
        before = finished_count(study)
        target = max(trials, before) if total else before + trials
        deadline = time.time() + timeout if timeout else None
        log(
            f"sweep {name}: {model}, trials {before} -> {target}, {jobs} at a time; "
            f"parent run {parent} in experiment {experiment_name}; Optuna storage {storage}"
        )
        status, tracking_broke = "FAILED", False
        try:
            _run_workers(spec, target, deadline)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except TrackingFailedError:
            tracking_broke = True
            raise
        finally:
            if tracking_broke:
                _end_after_tracking_failed(client, parent, uri)
            else:
                try:
                    record_summary(client, parent, study, space)
                except Exception as exc:  # never hide the sweep's own error behind this one
                    logger.warning(
                        "could not record the sweep's summary on run %s: %s", parent, exc
                    )
                client.set_terminated(parent, status)
    return _result(study, spec, experiment_name, finished_count(study) - before)


def _end_after_tracking_failed(client: MlflowClient, parent: str, uri: str) -> None:
    """End the parent run FAILED after a trial's tracking failed: one short request, none
    to a server that no longer answers, and no summary (MLflow's minutes of retries per
    request would only delay the trial's error; continuing the sweep records it)."""
    from experiments.tracking_errors import (
        REQUEST_TIMEOUT_ENV,
        RETRIES_ENV,
        env_vars,
        is_server_uri,
        server_answers,
    )

    if is_server_uri(uri) and not server_answers(uri):
        logger.warning(
            "the tracking server %s does not answer: the sweep's parent run %s stays RUNNING",
            uri,
            parent,
        )
        return
    with env_vars(**{RETRIES_ENV: "1", REQUEST_TIMEOUT_ENV: "5"}):
        try:
            client.set_terminated(parent, "FAILED")
        except Exception as exc:  # never hide the trial's error behind this one
            logger.warning("could not mark the sweep's parent run %s FAILED: %s", parent, exc)


def _run_workers(spec: SweepSpec, target: int, deadline: float | None) -> None:
    if spec.jobs == 1:
        _work(spec, 0, target, deadline)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(spec.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_work, spec, w, target, deadline) for w in range(spec.jobs)]
        for future in futures:
            future.result()


def _result(study, spec: SweepSpec, experiment_name: str, ran: int) -> SweepResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    result = SweepResult(
        name=spec.name,
        parent_run_id=spec.parent_run_id,
        experiment_name=experiment_name,
        storage=spec.storage,
        monitor=study.user_attrs.get("monitor", "value"),
        trials_run=ran,
        counts={s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
    )
    if result.counts.get("complete"):
        best = study.best_trial
        result.best_trial = best.number
        result.best_value = best.value
        result.best_run_id = best.user_attrs.get("mlflow_run_id")
        result.best_values = spec.space.decode(best.params)
        result.best_overrides = spec.space.overrides(result.best_values)
    return result
