"""The README results table: every registered model, 3 seeds, mean and std.

    ctr results [--models deepfm,xdeepfm] [--seeds 1,2,3] [--readme README.md] [--update]
    table = write_results(models="deepfm,fm", seeds="1")  # what `ctr results` calls

Each run trains the model's default config (configs/<model>_movielens.yaml)
with early stopping on validation; test metrics are those of the best
validation epoch. Popularity (training counts) is a reference row. The table
is written between the results markers in the README, and the per-seed
numbers to results/results.json. With --update, only the given models are
retrained and their rows replace theirs in the saved results; the other rows
are kept.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ctr.errors import CTRError, MissingFileError

RESULTS_EXPERIMENT = "movielens-100k-results"  # where --track logs every run
START = "<!-- results:start -->"
END = "<!-- results:end -->"

COLUMNS = [
    ("test_hr_at_10", "HR@10", 3),
    ("test_ndcg_at_10", "NDCG@10", 4),
    ("test_full_ndcg_at_10", "full NDCG@10", 4),
    ("test_later_hr_at_10", "HR@10 later", 3),
    ("test_later_ndcg_at_10", "NDCG@10 later", 4),
    ("test_auc", "AUC", 4),
    ("best_val_ndcg_at_10", "val NDCG@10", 4),
]


class ResultsError(CTRError):
    """Bad `ctr results` input: an unknown model, a bad seed list, saved results
    that are not a results JSON or average other seeds."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _run_one(
    path: Path, overrides: list[str], model: str, seed: int, track: str | None, threads: int | None
) -> dict[str, Any]:
    """Train one (model, seed); in a worker process when jobs > 1."""
    from ctr.config import load_config
    from ctr.training import fit

    if threads is not None:  # first, so that a training.num_threads the user gave wins
        overrides = [f"training.num_threads={threads}", *overrides]
    t0 = time.perf_counter()
    if track:
        summary = tracked_runner(track)(path, overrides, model, seed)
    else:
        result = fit(load_config(path, overrides))
        summary = {k: v for k, v in result.summary.items() if isinstance(v, (int, float, bool))}
    summary["seed"] = seed
    summary["wall_seconds"] = time.perf_counter() - t0
    return summary


def run_results(
    models: list[str],
    seeds: list[int],
    config_dir: str | Path = "configs",
    overrides: list[str] | None = None,
    track: str | None = None,
    jobs: int = 1,
    log: Callable[[str], None] = print,
    model_overrides: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Train each model with each seed; return per-run summaries and the popularity row.

    track: an MLflow experiment name to track every run in, or None.
    jobs: runs trained in parallel processes (each with one torch thread when > 1).
    model_overrides: more overrides per model, after `overrides` (e.g. a sweep's choice).
    """
    from ctr.config import load_config
    from ctr.data import resolve_data_dir
    from ctr.training import build_data
    from ctr.training.baselines import PopularityModel
    from ctr.training.evaluator import RankingEvaluator

    config_dir = resolve_data_dir(config_dir)  # relative: cwd, then the project root
    tasks = []
    for model in models:
        path = Path(config_dir) / f"{model}_movielens.yaml"
        own = [*(overrides or []), *(model_overrides or {}).get(model, [])]
        for seed in seeds:
            load_config(path, [*own, f"seed={seed}"])  # fail fast on a bad config
            tasks.append((path, [*own, f"seed={seed}"], model, seed))

    def report(model: str, summary: dict[str, Any]) -> None:
        log(
            f"{model} seed {summary['seed']}: "
            f"test NDCG@10 {summary.get('test_ndcg_at_10', float('nan')):.4f} "
            f"HR@10 {summary.get('test_hr_at_10', float('nan')):.4f} "
            f"best epoch {summary.get('best_epoch')} ({summary['wall_seconds']:.0f}s)"
        )

    done: dict[tuple[str, int], dict[str, Any]] = {}
    if jobs <= 1:
        for path, ovr, model, seed in tasks:
            done[(model, seed)] = _run_one(path, ovr, model, seed, track, None)
            report(model, done[(model, seed)])
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_one, path, ovr, model, seed, track, 1): (model, seed)
                for path, ovr, model, seed in tasks
            }
            for future in as_completed(futures):
                model, seed = futures[future]
                done[(model, seed)] = future.result()
                report(model, done[(model, seed)])
    runs = {m: [done[(m, s)] for s in seeds] for m in models}
    # popularity reference on the same test candidates
    config = load_config(Path(config_dir) / f"{models[0]}_movielens.yaml", overrides)
    adapter, _, _, _, test_ds = build_data(config)
    popularity = RankingEvaluator(test_ds, full_ranking=True).evaluate(
        PopularityModel(adapter.item_popularity)
    )
    return {"runs": runs, "popularity": popularity, "seeds": seeds}


def _check_same_seeds(previous: dict[str, Any], seeds: list[int], where: str) -> None:
    """Rows merged into `previous` must average the same seeds as its rows do."""
    held = list(previous.get("seeds", []))
    if held != list(seeds):
        raise ResultsError(
            f"{where} holds seeds {held}, not {list(seeds)}; pass the same --seeds, "
            "or retrain every model without --update"
        )


def load_results_for_update(path: str | Path, seeds: list[int]) -> dict[str, Any]:
    """The saved results that `ctr results --update` merges into, checked before training."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"--update merges into {path}, which does not exist; run without --update first"
        )
    previous = read_results(path)
    _check_same_seeds(previous, seeds, str(path))
    return previous


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`previous` with the rows of the models in `new` replaced (or appended).

    For retraining some models after a change to their configs without
    retraining the rest. Both must use the same seeds: a table whose rows
    average different seeds would not compare like with like.
    """
    _check_same_seeds(previous, new["seeds"], "the saved results")
    runs = dict(previous.get("runs", {}))
    runs.update(new["runs"])
    return {"runs": runs, "popularity": new["popularity"], "seeds": new["seeds"]}


def tracked_runner(experiment_name: str):
    """A runner that trains each (model, seed) as a tracked MLflow run and reads
    its summary back from the run (so the table and the runs agree)."""

    def run(path: Path, overrides: list[str], model: str, seed: int) -> dict[str, Any]:
        from mlflow import MlflowClient

        from experiments.train import run_training

        run_id = run_training(
            path, overrides, experiment_name=experiment_name, run_name=f"{model}-seed{seed}"
        )
        client = MlflowClient()
        data = client.get_run(run_id).data
        summary: dict[str, Any] = dict(data.metrics)
        summary["best_epoch"] = int(float(data.tags.get("best_epoch", "0")))
        seconds = [m.value for m in client.get_metric_history(run_id, "epoch_seconds")]
        summary["seconds_per_epoch"] = statistics.fmean(seconds) if seconds else float("nan")
        summary["run_id"] = run_id
        return summary

    return run


def format_table(results: dict[str, Any]) -> str:
    header = "| model | " + " | ".join(c[1] for c in COLUMNS) + " | best epoch | s/epoch |"
    sep = "|---" * (len(COLUMNS) + 3) + "|"
    lines = [header, sep]
    pop = results["popularity"]
    cells = [f"{pop[key]:.{digits}f}" if key in pop else "-" for key, _, digits in COLUMNS]
    lines.append("| popularity | " + " | ".join(cells) + " | - | - |")
    for model, runs in results["runs"].items():
        cells = []
        for key, _, digits in COLUMNS:
            values = [r[key] for r in runs if key in r]
            if not values:
                cells.append("-")
                continue
            mean, std = _mean_std(values)
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        best_epochs = ", ".join(str(r.get("best_epoch")) for r in runs)
        seconds = statistics.fmean(r["seconds_per_epoch"] for r in runs)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {best_epochs} | {seconds:.1f} |")
    n = len(results["seeds"])
    lines.append("")
    lines.append(
        f"Mean ± std over {n} seeds ({', '.join(map(str, results['seeds']))}); test metrics "
        "at the best validation epoch; 1 + 999 sampled candidates per user, full NDCG@10 "
        'ranks against every unseen item. "later": the users whose test item is strictly '
        "later than their validation item (not tied to the second). s/epoch is training "
        "time only (evaluation excluded)."
    )
    if results.get("sweeps"):  # the configs were chosen by sweeps: say how, and which
        from experiments.results_sweeps import sweep_note

        lines += ["", *sweep_note(results["sweeps"])]
    return "\n".join(lines)


def write_readme_table(table: str, readme: str | Path) -> None:
    """Put `table` between the results markers of `readme` (or append a Results section)."""
    readme = Path(readme)
    _check_readme(readme)
    text = readme.read_text()
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        before = text.split(START)[0]
        after = text.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    tmp = readme.with_suffix(readme.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(readme)


def save_results(results: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(path)


def _check_readme(readme: Path) -> None:
    if not readme.is_file():
        raise MissingFileError(
            f"README to write the results table into not found: {readme}; pass --readme PATH"
        )


def read_results(path: str | Path) -> dict[str, Any]:
    """A results JSON written by save_results (runs, popularity and seeds)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"results JSON not found: {path}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not JSON ({exc}); pass a file ctr results wrote") from None
    keys = sorted(results) if isinstance(results, dict) else type(results).__name__
    if not isinstance(results, dict) or not {"runs", "popularity", "seeds"} <= set(results):
        raise ResultsError(
            f"expected a results JSON with runs, popularity and seeds in {path}, got {keys}; "
            "pass a file ctr results wrote"
        )
    return results


def config_rows(config_dir: str | Path = "configs") -> list[str]:
    """Rows other than the registered models' own: each configs/<row>_movielens.yaml
    whose row is not a model name (e.g. deepfm_history, DeepFM reading the history)."""
    from ctr.data import resolve_data_dir
    from ctr.models import list_models

    suffix = "_movielens.yaml"
    files = sorted(Path(resolve_data_dir(config_dir)).glob(f"*{suffix}"))
    return [f.name[: -len(suffix)] for f in files if f.name[: -len(suffix)] not in list_models()]


def parse_models(models: str | Sequence[str] = "all") -> list[str]:
    """'all' (every registered model) or comma-separated rows: model names, or the name
    of another config in configs/ (<row>_movielens.yaml, e.g. deepfm_history)."""
    from ctr.models import list_models

    if isinstance(models, str):
        names = list_models() if models == "all" else [m.strip() for m in models.split(",")]
    else:
        names = list(models)
    names = [n for n in names if n]
    rows = config_rows()
    known = ", ".join([*list_models(), *rows])
    if not names:
        raise ResultsError(f"--models: expected one or more model names, got none; known: {known}")
    unknown = sorted(set(names) - set(list_models()) - set(rows))
    if unknown:
        raise ResultsError(f"--models: unknown models {unknown}; known: {known}")
    return names


def parse_seeds(seeds: str | Sequence[int] = "1,2,3") -> list[int]:
    """Comma-separated seeds ('1,2,3') as a list of non-negative ints."""
    if isinstance(seeds, str):
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ResultsError(
                f"--seeds: expected comma-separated integers, got {seeds!r}"
            ) from None
    else:
        seed_list = [int(s) for s in seeds]
    if not seed_list or min(seed_list) < 0:
        raise ResultsError(f"--seeds: expected one or more integers >= 0, got {seeds!r}")
    return seed_list


def write_results(
    models: str | Sequence[str] = "all",
    seeds: str | Sequence[int] = "1,2,3",
    readme: str | Path = "README.md",
    output: str | Path = "results/results.json",
    overrides: Sequence[str] = (),
    track: bool = True,
    jobs: int = 1,
    from_json: str | Path | None = None,
    update: bool = False,
    log: Callable[[str], None] = print,
    sweep_trials: int | None = None,
    sweep_prefix: str = "results",
) -> str:
    """`ctr results`: train, save the per-seed numbers, write the README table; return it.

    from_json: re-render the table of a results JSON written earlier, without training.
    update: retrain only `models` and replace their rows in `output`, keeping the others
    (`output` must exist and hold the same seeds).
    track: log every run to the MLflow experiment RESULTS_EXPERIMENT.
    sweep_trials: first sweep every model with this many trials (sweeps named
    <sweep_prefix>-<model>) and train each winner (experiments/results_sweeps.py).
    Input is checked before any training: unknown models, bad seeds, a missing
    README or saved results raise ResultsError / MissingFileError.
    """
    if from_json:
        results = read_results(from_json)
        _check_readme(Path(readme))
        table = format_table(results)
        write_readme_table(table, readme)
        return table
    names = parse_models(models)
    seed_list = parse_seeds(seeds)
    if sweep_trials is not None and update:
        raise ResultsError("--from-sweeps sweeps and retrains every model; drop --update")
    previous = load_results_for_update(output, seed_list) if update else None
    _check_readme(Path(readme))
    if sweep_trials is not None:
        from experiments.results_sweeps import results_from_sweeps

        kwargs = dict(overrides=list(overrides), track=track, jobs=jobs, log=log)
        outcome = results_from_sweeps(names, seed_list, sweep_trials, sweep_prefix, **kwargs)
        save_results(outcome, output)
        table = format_table(outcome)
        write_readme_table(table, readme)
        return table
    outcome = run_results(
        names,
        seed_list,
        overrides=list(overrides),
        track=RESULTS_EXPERIMENT if track else None,
        jobs=jobs,
        log=log,
    )
    if previous is not None:
        outcome = merge_results(previous, outcome)
    save_results(outcome, output)
    table = format_table(outcome)
    write_readme_table(table, readme)
    return table
