"""Promote the best finished run of an experiment to the model registry.

    result = promote_best_run("movielens-100k", metric="val_ndcg_at_10")
    result.uri  # "models:/deepfm-movielens@champion"

Steps: pick the best FINISHED run by the metric (val metrics: the run's best
epoch); register its logged model as a version of `<model>-movielens`
(unless that run already has a version there); compare with the run behind the
current alias holder and refuse if that one is better (unless `force`); move
the alias to the new version and give the old holder the alias `previous`.
The run's serving model (`recommender`, see experiments.serving) is registered
the same way as `<model>-movielens-recommender` under the same alias.

Concurrent promotes stay consistent: promotions of one registered model take
turns (experiments.promote_lock), so each compares with the alias holder of the
one before and gives it `previous`; a version created by a racing promote of
the same run is found again and the duplicate removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ctr.errors import CTRError
from experiments.artifacts import MODEL_NAME
from experiments.promote_lock import promotion_lock
from experiments.runs import (
    DEFAULT_METRIC,
    get_client,
    lower_is_better,
    metric_value,
    ranked_runs,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

DEFAULT_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
MODEL_SUFFIX = "-movielens"


class PromotionError(CTRError, RuntimeError):
    """Promotion refused or impossible (the message says why and what to do)."""


@dataclass
class PromotionResult:
    model_name: str
    alias: str
    run_id: str
    metric: str
    value: float
    version: str | None  # None on a dry run that would create a new version
    created: bool  # a new registry version was created
    previous_version: str | None  # the version that held the alias before, if another
    previous_value: float | None
    changed: bool  # the alias moved
    dry_run: bool
    message: str
    recommender_version: str | None = None  # version of <model_name>-recommender at the alias

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"

    @property
    def recommender_uri(self) -> str | None:
        """models:/<model_name>-recommender@<alias>, when the run's recommender was registered."""
        if self.recommender_version is None:
            return None
        return f"models:/{recommender_model_name(self.model_name)}@{self.alias}"


def registered_model_name(run: Run) -> str:
    model = run.data.params.get("model") or run.data.tags.get("model")
    if not model:
        raise PromotionError(f"run {run.info.run_id} has no 'model' param; is it a ctr run?")
    return f"{model}{MODEL_SUFFIX}"


def recommender_model_name(model_name: str) -> str:
    """The registered serving model beside `model_name`: deepfm-movielens-recommender."""
    from experiments.serving import REGISTRY_SUFFIX

    return f"{model_name}{REGISTRY_SUFFIX}"


def logged_model_id(client: MlflowClient, run: Run, name: str = MODEL_NAME) -> str:
    """The id of the model `name` the run logged (default: its PyTorch model `model`)."""
    from mlflow.entities import LoggedModelStatus

    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'",
    )
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    if not ready:
        raise PromotionError(
            f"run {run.info.run_id} ({run.info.run_name}) has no logged model {name!r}; "
            f"it cannot be promoted (was it trained with tracking of the model disabled?)"
        )
    return max(ready, key=lambda m: m.creation_timestamp).model_id


def _alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _set_alias(client: MlflowClient, name: str, alias: str, version: str, tries: int = 5) -> None:
    """Point `alias` at `version`. A racing promote setting the same alias at the
    same moment makes the registry's insert fail once; setting it again updates."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(tries):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException:
            if attempt == tries - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def _versions_of_run(client: MlflowClient, name: str, run_id: str) -> list[ModelVersion]:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(versions, key=lambda v: int(v.version))


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="ctr model on MovieLens-100K, promoted by `ctr promote`"
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _version_for_run(
    client: MlflowClient, name: str, run: Run, logged_name: str = MODEL_NAME
) -> tuple[ModelVersion, bool]:
    """The registry version of `run` (created if missing); a racing duplicate is removed."""
    existing = _versions_of_run(client, name, run.info.run_id)
    if existing:
        return existing[0], False
    model_id = logged_model_id(client, run, logged_name)
    _ensure_registered_model(client, name)
    created = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run.info.run_id,
        model_id=model_id,
        description=f"run {run.info.run_name} ({run.info.run_id})",
    )
    # A promote racing on the same run may have registered it too: keep the oldest.
    versions = _versions_of_run(client, name, run.info.run_id)
    keep = versions[0] if versions else created
    if keep.version != created.version:
        client.delete_model_version(name, created.version)
        return keep, False
    return created, True


def _promote_recommender(client: MlflowClient, name: str, run: Run, alias: str) -> str | None:
    """Register the run's `recommender` as `<name>-recommender` and point `alias` at it
    (the former holder gets `previous`); the version, or None if the run logged none."""
    from experiments.serving import RECOMMENDER_NAME

    try:
        logged_model_id(client, run, RECOMMENDER_NAME)
    except PromotionError:  # a run from before serving models were logged
        return None
    serving_name = recommender_model_name(name)
    version, _ = _version_for_run(client, serving_name, run, RECOMMENDER_NAME)
    holder = _alias_holder(client, serving_name, alias)
    if holder is None or holder.version != version.version:
        if holder is not None:
            _set_alias(client, serving_name, PREVIOUS_ALIAS, holder.version)
        _set_alias(client, serving_name, alias, version.version)
    return version.version


def _recommender_note(name: str, alias: str, version: str | None) -> str:
    if version is None:
        return f"; the run logged no {recommender_model_name(name)!r} serving model"
    return f"; {recommender_model_name(name)} version {version} is @{alias}"


def promote_best_run(
    experiment: str,
    metric: str = DEFAULT_METRIC,
    model_name: str | None = None,
    alias: str = DEFAULT_ALIAS,
    dry_run: bool = False,
    force: bool = False,
    filter_string: str | None = None,
    client: MlflowClient | None = None,
) -> PromotionResult:
    """Register the best finished run's model and point `alias` at it.

    Raises RunQueryError (unknown experiment / metric / filter, no finished runs) or
    PromotionError (refused: the alias holder is better and force is False; or the
    run has no model).
    """
    if metric.startswith("test_"):
        raise PromotionError(
            f"expected a validation metric (val_*) to choose a model, got {metric!r}: "
            f"choosing on test numbers leaks the test set into the choice"
        )
    if alias == PREVIOUS_ALIAS:
        raise PromotionError(f"alias {PREVIOUS_ALIAS!r} is reserved for the former holder")
    client = get_client(client)
    _, runs = ranked_runs(client, experiment, metric, filter_string, purpose=" to promote", top=1)
    best = runs[0]
    name = model_name or registered_model_name(best)
    if dry_run:  # reads only
        return _promote(client, best, name, metric, alias, dry_run, force)
    with promotion_lock(client, name):  # one promotion of `name` at a time
        return _promote(client, best, name, metric, alias, dry_run, force)


def _promote(
    client: MlflowClient, best: Run, name: str, metric: str, alias: str, dry_run: bool, force: bool
) -> PromotionResult:
    """promote_best_run once the run is chosen: compare with the alias holder, move
    the aliases (under the promotion lock unless dry_run)."""
    value = metric_value(best, metric)
    holder = _alias_holder(client, name, alias)
    holder_value = None
    if holder is not None and holder.run_id:
        holder_value = metric_value(client.get_run(holder.run_id), metric)

    def result(version, created, changed, message) -> PromotionResult:
        previous = holder.version if holder is not None and changed else None
        return PromotionResult(
            model_name=name,
            alias=alias,
            run_id=best.info.run_id,
            metric=metric,
            value=value,
            version=version,
            created=created,
            previous_version=previous,
            previous_value=holder_value if previous else None,
            changed=changed,
            dry_run=dry_run,
            message=message,
        )

    if holder is not None and holder.run_id == best.info.run_id:
        # the serving model may be missing (promoted before it existed): make sure of it
        serving_version = None if dry_run else _promote_recommender(client, name, best, alias)
        done = result(
            holder.version,
            False,
            False,
            f"run {best.info.run_id} already holds {name}@{alias} (version {holder.version}, "
            f"{metric}={value:.4f}); nothing to do",
        )
        done.recommender_version = serving_version
        return done
    if holder is not None and holder_value is not None and not force:
        better = holder_value < value if lower_is_better(metric) else holder_value > value
        if better:
            raise PromotionError(
                f"refusing to promote: the current {name}@{alias} (version {holder.version}, "
                f"run {holder.run_id}) has {metric}={holder_value:.4f}, better than the best "
                f"candidate run {best.info.run_id} with {metric}={value:.4f}; use --force to "
                f"promote anyway"
            )

    if dry_run:
        logged_model_id(client, best)  # fail now if there is no model to register
        existing = _versions_of_run(client, name, best.info.run_id)
        version = existing[0].version if existing else None
        what = f"version {version}" if version else "a new version"
        held = "n/a" if holder_value is None else f"{holder_value:.4f}"
        was = f" (now version {holder.version}, {metric}={held})" if holder else ""
        return result(
            version,
            False,
            True,
            f"dry run: would point {name}@{alias}{was} at {what} from run "
            f"{best.info.run_id} ({best.info.run_name}) with {metric}={value:.4f}",
        )

    version, created = _version_for_run(client, name, best)
    if holder is not None and holder.version != version.version:
        _set_alias(client, name, PREVIOUS_ALIAS, holder.version)
    _set_alias(client, name, alias, version.version)
    serving_version = _promote_recommender(client, name, best, alias)
    was = (
        f"; version {holder.version} ({metric}={holder_value:.4f}) is now @{PREVIOUS_ALIAS}"
        if holder is not None and holder_value is not None
        else ""
    )
    promoted = result(
        version.version,
        created,
        True,
        f"{name} version {version.version} ({'new' if created else 'existing'}) from run "
        f"{best.info.run_id} ({best.info.run_name}) with {metric}={value:.4f} is now "
        f"@{alias}{was}{_recommender_note(name, alias, serving_version)}",
    )
    promoted.recommender_version = serving_version
    return promoted
