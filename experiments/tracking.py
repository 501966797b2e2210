"""MLflow tracking of ctr training runs: a trainer callback plus small helpers.

`MLflowCallback` records one run completely and comparably:

    params     the resolved config flattened with dotted keys
               (training.learning_rate, ...), without the sections of other models
               (a DeepFM run has no cin.* or attention.*), plus model, dataset, seed,
               num_params and the torch threads (torch_num_threads,
               torch_num_interop_threads)
    tags       model, dataset, device, cpu (the CPU model); at the end best_epoch,
               epochs_run, stopped_early
    metrics    per epoch, ONE batched call with step=epoch (train_loss, lr,
               epoch_seconds, val_*); at the end test_* and best_val_* (step=best_epoch)
    artifacts  config/config.yaml           the resolved config, whole (every section)
               data/schema.json             the model's input fields
               data/encoders.json           encoders + side-feature tables (raw -> indices)
               data/eval_candidates.npz     val/test user ids and candidate item ids
               checkpoints/best.pt          logged as soon as it is written
               plots/training_curves.png
               model (a logged model)       mlflow.pytorch, pickle format + the ctr code

Keys never contain '@' (MLflow rejects it): `val_ndcg_at_10`, not `val_ndcg@10`.

The artifact paths and the helpers that write them (the model's requirements,
signature and code, the candidates file, the curves plot) are in
experiments/artifacts.py.

Extra models (e.g. a pyfunc wrapper for serving) are logged at the end of a
successful run by the `extra_model_loggers` given to the callback: each is
called as `logger(run_id, result)` with the run's `ctr.training.TrainResult`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.training.callbacks import Callback, TrainingContext
from experiments.artifacts import (
    CANDIDATES_ARTIFACT,
    CHECKPOINT_ARTIFACT_DIR,
    CONFIG_ARTIFACT,
    CURVES_ARTIFACT,
    ENCODERS_ARTIFACT,
    MODEL_NAME,
    SCHEMA_ARTIFACT,
    ctr_package_dir,
    eval_candidates_npz,
    model_signature,
    pip_requirements,
    plot_training_curves,
    silence_pickle_warnings,
)
from experiments.tracking_errors import recording_after, restored_history

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ctr.training import TrainResult

logger = logging.getLogger("experiments.tracking")

# MLflow's limits per log_batch request
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

ExtraModelLogger = Callable[[str, "TrainResult"], None]


def metric_key(name: str) -> str:
    """A metric name MLflow accepts: 'hr@10' -> 'hr_at_10'."""
    return name.replace("@", "_at_")


def param_value(value: Any) -> str:
    """How a config value is stored as an MLflow param (lists/dicts as JSON)."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=isinstance(value, dict))
    return str(value)


def unused_config_sections(model_name: str) -> set[str]:
    """Config sections that only other models read ('cin', 'attention' for deepfm).

    Each registered model lists the sections it reads in `config_sections`; a
    section that some model lists is model-specific, and unused unless this model
    lists it. Sections no model lists (data, features, training) are always used.
    """
    from ctr.errors import CTRError
    from ctr.models import MODEL_REGISTRY, list_models

    if model_name not in MODEL_REGISTRY:
        raise CTRError(f"expected a model name in {list_models()}, got {model_name!r}")
    used = set(MODEL_REGISTRY[model_name].config_sections)
    model_specific = {s for cls in MODEL_REGISTRY.values() for s in cls.config_sections}
    return model_specific - used


def run_params(context: TrainingContext) -> dict[str, str]:
    """The params of a run: the flattened config without the sections of other
    models, plus model, dataset, seed, num_params and the torch thread counts."""
    import torch

    cfg = context.config
    unused = unused_config_sections(cfg.model_name)
    params = {
        key: param_value(value)
        for key, value in cfg.to_flat_dict().items()
        if key.split(".", 1)[0] not in unused
    }
    params.update(
        model=cfg.model_name,
        dataset=cfg.data.dataset,
        seed=str(cfg.seed),
        num_params=str(context.num_params),
        # what the run actually trained with (training.num_threads may be unset)
        torch_num_threads=str(torch.get_num_threads()),
        torch_num_interop_threads=str(torch.get_num_interop_threads()),
    )
    return params


def cpu_model() -> str:
    """The CPU's model name ('model name' in /proc/cpuinfo, else platform.processor())."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


class MLflowCallback(Callback):
    """Logs a training run to MLflow (see the module docstring for what is logged).

    Args:
        run_id: the (active) run to log into.
        client: an MlflowClient (default: one for the current tracking URI).
        log_model: log the trained model at the end (tests of the wiring may skip it).
        extra_model_loggers: called as `fn(run_id, result)` after the model is
            logged, to log more models (e.g. a serving wrapper) beside it.

    Example:
        with mlflow.start_run() as run:
            result = ctr.training.fit(config, callbacks=[MLflowCallback(run.info.run_id)])
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        log_model: bool = True,
        extra_model_loggers: Sequence[ExtraModelLogger] = (),
    ) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = client or MlflowClient()
        self.log_model = log_model
        self.extra_model_loggers = list(extra_model_loggers)
        self.context: TrainingContext | None = None
        self.history: list[dict[str, float]] = []
        self.restored_history: list[dict[str, float]] = []
        self.logged_best: Path | None = None
        self.model_uri: str | None = None
        # wall time spent inside the per-epoch hooks (what tracking adds to an epoch)
        self.epoch_overhead_seconds: list[float] = []
        self._epoch_t0: float | None = None

    # ---------------------------------------------------------------- helpers
    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        # a run resumed into itself keeps its first value of training.resume_from
        clashes = {
            k: (existing[k], v)
            for k, v in params.items()
            if k in existing and existing[k] != v and k != "training.resume_from"
        }
        if clashes:
            detail = ", ".join(
                f"{k}: run has {a!r}, config gives {b!r}" for k, (a, b) in clashes.items()
            )
            raise ValueError(
                f"expected the run's existing params to match the resolved config, got {detail}; "
                f"pass matching values (e.g. -P model=... for the config's model_name)"
            )
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[start : start + _MAX_PARAMS_PER_BATCH])

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [
            Metric(metric_key(k), float(v), stamp, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for start in range(0, len(batch), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=batch[start : start + _MAX_METRICS_PER_BATCH]
            )

    def _log_checkpoint(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), CHECKPOINT_ARTIFACT_DIR)

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, context: TrainingContext) -> None:
        from mlflow.entities import RunTag

        from ctr.config import dump_config

        self.context = context
        cfg = context.config
        self.restored_history = restored_history(cfg)  # the epochs before a resume, for the curves
        self._log_params(run_params(context))
        self.client.log_batch(
            self.run_id,
            tags=[
                RunTag("model", cfg.model_name),
                RunTag("dataset", cfg.data.dataset),
                RunTag("device", str(context.device)),
                RunTag("cpu", cpu_model()),
                RunTag("checkpoint_dir", str(context.checkpoint_dir)),
            ],
        )
        self.client.log_text(self.run_id, dump_config(cfg), CONFIG_ARTIFACT)
        self.client.log_text(self.run_id, context.schema.to_json(), SCHEMA_ARTIFACT)
        if context.preprocessor is not None and hasattr(context.preprocessor, "to_dict"):
            self.client.log_dict(self.run_id, context.preprocessor.to_dict(), ENCODERS_ARTIFACT)
        if context.val_split is not None or context.test_split is not None:
            self._log_bytes(
                eval_candidates_npz(context.val_split, context.test_split), CANDIDATES_ARTIFACT
            )
        self._epoch_t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        t0 = time.perf_counter()
        self.history.append({"epoch": epoch, **metrics})
        self._log_metrics(metrics, step=epoch)
        self.epoch_overhead_seconds.append(time.perf_counter() - t0)

    def on_checkpoint(self, epoch: int, path: Path, is_best: bool) -> None:
        if not is_best:
            return
        t0 = time.perf_counter()
        self._log_checkpoint(Path(path))
        self.logged_best = Path(path)
        if self.epoch_overhead_seconds:
            self.epoch_overhead_seconds[-1] += time.perf_counter() - t0

    def on_train_end(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        best_epoch = int(summary.get("best_epoch", 0))
        final = {k: v for k, v in summary.items() if k.startswith(("test_", "best_val_"))}
        final["seconds_per_epoch"] = summary.get("seconds_per_epoch", math.nan)
        self._log_metrics(final, step=best_epoch)
        self.client.log_batch(
            self.run_id,
            tags=[
                RunTag("best_epoch", str(best_epoch)),
                RunTag("epochs_run", str(summary.get("epochs_run", len(self.history)))),
                RunTag("stopped_early", str(bool(summary.get("stopped_early", False))).lower()),
            ],
        )
        best = summary.get("best_checkpoint")
        if best and Path(best).is_file() and self.logged_best is None:
            self._log_checkpoint(Path(best))
            self.logged_best = Path(best)
        if self.history:
            self._log_figure(plot_training_curves(self.curve_history()), CURVES_ARTIFACT)
        if self.context is not None:
            result = self._result(summary)
            if self.log_model:
                self.model_uri = self.log_pytorch_model(result)
            self.log_extra_models(result)

    def on_exception(self, exc: BaseException) -> None:
        """Keep what a failed run produced: best (and last) checkpoint, partial curves
        (after a tracking error: one quick try each, none if the server is gone)."""
        with recording_after(exc, self.client.tracking_uri) as worth_trying:
            if self.context is None or not worth_trying:
                return
            for name in ("best.pt", "last.pt"):
                path = Path(self.context.checkpoint_dir) / name
                try:
                    if path.is_file():
                        self._log_checkpoint(path)
                except Exception as log_exc:  # never mask the training error
                    logger.warning("could not log %s after a failure: %s", path, log_exc)
            try:
                if self.history:
                    self._log_figure(plot_training_curves(self.curve_history()), CURVES_ARTIFACT)
            except Exception as log_exc:
                logger.warning("could not log the training curves after a failure: %s", log_exc)

    # ----------------------------------------------------------------- models
    def _result(self, summary: dict[str, Any]) -> TrainResult:
        from ctr.training import TrainResult

        ctx = self.context
        assert ctx is not None
        return TrainResult(
            model=ctx.model,
            schema=ctx.schema,
            config=ctx.config,
            summary=summary,
            history=list(self.history),
            preprocessor=ctx.preprocessor,
            train_interactions=ctx.train_interactions,
            val_split=ctx.val_split,
            test_split=ctx.test_split,
        )

    def log_pytorch_model(self, result: TrainResult) -> str:
        """Log the best model with mlflow.pytorch (pickle + ctr code); return its URI."""
        import mlflow.pytorch

        _require_active_run(self.run_id)
        model = result.model
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()  # loadable on machines without the accelerator
        model.eval()
        # A signature, no input example: MLflow would validate an example through the
        # pytorch pyfunc flavor, which takes no dict inputs (serving has its own model).
        signature = model_signature(result.schema)
        with silence_pickle_warnings():  # pickle on purpose: see experiments.artifacts
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                serialization_format="pickle",
                code_paths=[str(ctr_package_dir())],
                pip_requirements=pip_requirements(),
                signature=signature,
            )
        return info.model_uri

    def log_extra_models(self, result: TrainResult) -> None:
        """Run the extra model loggers (e.g. a serving pyfunc) for this run."""
        if self.extra_model_loggers:
            _require_active_run(self.run_id)
        for log_fn in self.extra_model_loggers:
            log_fn(self.run_id, result)

    def _log_bytes(self, data: bytes, artifact_file: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent))

    def _log_figure(self, fig, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, fig, artifact_file)
        finally:
            plt.close(fig)

    def curve_history(self) -> list[dict[str, float]]:
        return [*self.restored_history, *self.history]  # a resumed run's earlier epochs first

    def overhead_fraction(self) -> float:
        """Tracking time per epoch / epoch time (train + eval), averaged over the run."""
        if not self.history:
            return 0.0
        epoch_time = sum(
            h.get("epoch_seconds", 0.0) + h.get("eval_seconds", 0.0) for h in self.history
        )
        return sum(self.epoch_overhead_seconds) / max(epoch_time, 1e-9)


def _require_active_run(run_id: str) -> None:
    """mlflow.*.log_model links a model to the active fluent run: it must be ours."""
    import mlflow

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        got = None if active is None else active.info.run_id
        raise ValueError(
            f"expected MLflow run {run_id} to be active while logging models, got {got}; "
            f"call fit() inside `with mlflow.start_run(run_id=...)`"
        )
