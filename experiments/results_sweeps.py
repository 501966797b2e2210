"""`ctr results --from-sweeps`: the results table as a fair comparison.

    outcome = results_from_sweeps(["deepfm", "fm"], [1, 2, 3], trials=24, prefix="results")

Every model gets the same tuning budget before it is reported: its sweep
`<prefix>-<model>` (experiments/sweep.py) is brought to `trials` trials, on the
tuning seed and validation alone; then the best trial's config is trained with
each reporting seed, exactly as `ctr results` trains the shipped configs, and
those runs give the table. A sweep interrupted in the night continues where it
stopped when the command runs again (trials already run count toward the
budget). The sweeps are always tracked (their parent and trial runs live in
MLflow); `track` applies to the seed runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from experiments.results import ResultsError, run_results


def results_from_sweeps(
    models: Sequence[str],
    seeds: Sequence[int],
    trials: int,
    prefix: str = "results",
    *,
    overrides: Sequence[str] = (),
    track: bool = True,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sweep each model to `trials` trials, then train each winner with `seeds`.

    Returns run_results' outcome plus `sweeps`: the budget, the tuning seed and per
    model the sweep, its best trial, value and chosen values.
    """
    from experiments.results import RESULTS_EXPERIMENT
    from experiments.sweep import DEFAULT_TUNING_SEED, run_sweep

    chosen: dict[str, dict[str, Any]] = {}
    model_overrides: dict[str, list[str]] = {}
    for model in models:
        name = f"{prefix}-{model}"
        result = run_sweep(
            model, trials, name=name, jobs=jobs, overrides=overrides, total=True, log=log
        )
        held = sum(n for state, n in result.counts.items() if state not in ("waiting", "running"))
        if held > trials:
            raise ResultsError(
                f"sweep {name} holds {held} trials, more than --trials {trials}: the models "
                f"would not have the same budget; pass --trials {held} or another --sweep-prefix"
            )
        if result.best_trial is None:
            raise ResultsError(
                f"sweep {name} has no complete trial among its {held}; see "
                f"`ctr compare --sweep {name}` (every trial pruned or failed)"
            )
        log(f"{model}: best of {held} trials: {result.monitor} {result.best_value:.4f}")
        model_overrides[model] = result.best_overrides
        chosen[model] = {
            "sweep": name,
            "trial": result.best_trial,
            "run_id": result.best_run_id,
            "value": result.best_value,
            "monitor": result.monitor,
            "values": result.best_values,
        }
    outcome = run_results(
        list(models),
        list(seeds),
        overrides=list(overrides),
        model_overrides=model_overrides,
        track=RESULTS_EXPERIMENT if track else None,
        jobs=jobs,
        log=log,
    )
    outcome["sweeps"] = {"trials": trials, "tuning_seed": DEFAULT_TUNING_SEED, "models": chosen}
    return outcome


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "off" if value is None else str(value)


def sweep_note(sweeps: dict[str, Any]) -> list[str]:
    """The lines under the table that say how each model's config was chosen."""
    lines = [
        f"Fair comparison: each model's config is the best of an Optuna sweep of "
        f"{sweeps['trials']} trials (TPE, median pruning; tuning seed {sweeps['tuning_seed']}, "
        f"chosen on the validation monitor, the test split unseen) over its search "
        f"space in configs/search/ (`ctr results --from-sweeps --trials {sweeps['trials']}`). "
        f"Chosen values, on top of configs/<model>_movielens.yaml:",
        "",
    ]
    for model, info in sweeps["models"].items():
        values = ", ".join(f"{key} {_short(v)}" for key, v in info["values"].items())
        lines.append(
            f"- {model} (sweep {info['sweep']}, trial {info['trial']}, "
            f"{info['monitor']} {info['value']:.4f}): {values}"
        )
    return lines
