"""The Trainer: optimisation, evaluation, early stopping, checkpoints, callbacks.

The model owns no infrastructure; everything that is not the forward pass lives
here. One epoch:

    rows = train_ds.sample_epoch(epoch, seed)        # positives + fresh negatives
    for batch in rows (permuted, batch_size):        # bce; bpr / softmax group rows per positive
        loss = criterion(model(batch)) + l2 * model.get_l2_reg_loss()
        step (with optional gradient clipping)
    metrics = val evaluator (sampled; full ranking once at the end, or each epoch if asked)
    scheduler, checkpoints (last, and best on the monitor), early stopping, callbacks

With training.ema_decay set, an exponential moving average of the weights is kept
beside the trained ones; evaluation and the checkpoints use the average
(ctr.training.state says what a checkpoint holds).

With training.recency_half_life set, the loss is a weighted mean: each training
positive and its negatives weigh by how recent the positive is among its user's
training interactions (`NegativeSamplingTrainSet.recency_weights`).

Randomness is derived from (seed, epoch) at the start of every epoch, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from ctr.config import ConfigError, ExperimentConfig
from ctr.data.schema import DatasetSchema
from ctr.errors import TrainingDivergedError
from ctr.training.callbacks import Callback, TrainingContext
from ctr.training.device import resolve_device
from ctr.training.evaluator import RankingEvaluator
from ctr.training.progress import _Progress
from ctr.training.state import new_checkpoint_dir, restore_trainer_state, trainer_state
from ctr.utils import get_logger, load_checkpoint, save_checkpoint

logger = get_logger("ctr.trainer")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def _ema_update(decay: float):
    """AveragedModel update: w_ema <- d * w_ema + (1 - d) * w, d = min(decay, (1+n)/(10+n)).

    n counts the updates so far. The warm-up term keeps early averages from being
    dominated by the random initial weights (as TensorFlow's moving average does).
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (index tables, counters)
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def _build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # fused kernels exist for CPU and CUDA tensors; elsewhere (mps) torch's default
    fused = cfg.fused_optimizer and all(p.device.type in ("cpu", "cuda") for p in params)
    kwargs = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, **kwargs)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    return torch.optim.SGD(
        params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def _build_scheduler(optimizer: torch.optim.Optimizer, cfg):
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.num_epochs)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.monitor_mode, factor=cfg.gamma, patience=max(1, cfg.step_size // 5)
        )
    return None


class Trainer:
    """Trains a ctr model on a negative-sampling train set and ranks val/test.

    Args:
        model: a ctr model (forward(batch) -> logits (B, 1), get_l2_reg_loss()).
        schema: the data set's schema (saved in checkpoints).
        config: the resolved ExperimentConfig.
        train_ds: a NegativeSamplingTrainSet: sample_epoch(epoch, seed) gives the
            epoch's rows; row_weights and group_rows say how they are laid out.
        val_ds, test_ds: EvalSplit objects (see ctr.data.dataset).
        callbacks: Callback instances, called in order.
        checkpoint_dir: where best.pt / last.pt go (default: a fresh directory
            under config.training.checkpoint_dir).
        preprocessor: data-set encoders, passed on to callbacks.
        train_interactions: the data set's training interactions (raw user_id,
            movie_id), passed on to callbacks (a recommender skips them in top-K).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        schema: DatasetSchema,
        config: ExperimentConfig,
        train_ds,
        val_ds,
        test_ds,
        callbacks: list[Callback] | None = None,
        checkpoint_dir: str | Path | None = None,
        preprocessor: Any = None,
        train_interactions: Any = None,
    ) -> None:
        self.config = config
        self.cfg = config.training
        self.schema = schema
        self.train_ds, self.val_ds, self.test_ds = train_ds, val_ds, test_ds
        self.callbacks = list(callbacks or [])
        self.preprocessor = preprocessor
        self.train_interactions = train_interactions
        if self.cfg.num_threads is not None:
            torch.set_num_threads(self.cfg.num_threads)
        self.device = resolve_device(self.cfg.device)
        self.model = model.to(self.device)
        self.optimizer = _build_optimizer(self.model, self.cfg)
        self.ema: AveragedModel | None = None
        if self.cfg.ema_decay is not None:
            self.ema = AveragedModel(
                self.model,
                multi_avg_fn=_ema_update(self.cfg.ema_decay),
                use_buffers=True,
            )
        self.scheduler = _build_scheduler(self.optimizer, self.cfg)
        # (N,) loss weight of each training positive and (N * (1 + K),) of each epoch row
        # (a negative weighs what its positive does); None trains unweighted
        self.positive_weights: torch.Tensor | None = None
        self.row_weights: torch.Tensor | None = None
        if self.cfg.recency_half_life is not None:
            w = train_ds.recency_weights(self.cfg.recency_half_life, self.cfg.recency_floor)
            self.positive_weights = w.to(self.device)
            self.row_weights = train_ds.row_weights(w).to(self.device)
        self.checkpoint_dir = Path(
            new_checkpoint_dir(config) if checkpoint_dir is None else checkpoint_dir
        )
        eval_kwargs = dict(
            batch_size=self.cfg.eval_batch_size,
            full_ranking=self.cfg.full_ranking,
            device=self.device,
        )
        self.val_evaluator = RankingEvaluator(val_ds, **eval_kwargs) if val_ds is not None else None
        # the test split is scored once, for the best epoch, with full ranking
        eval_kwargs["full_ranking"] = self.cfg.test_full_ranking
        self.test_evaluator = (
            RankingEvaluator(test_ds, **eval_kwargs) if test_ds is not None else None
        )
        valid = self.val_evaluator.metric_names() if self.val_evaluator is not None else []
        if self.cfg.monitor not in valid:
            raise ConfigError(
                f"expected training.monitor to be a validation metric, one of {valid}, "
                f"got {self.cfg.monitor!r}"
                + ("" if valid else " (there is no validation split to compute one on)")
            )
        self.monitor = self.cfg.monitor
        # ranking val against the whole catalogue costs more than the sampled metrics:
        # every epoch only when asked for or monitored, else once for the best weights
        self.full_ranking_each_epoch = self.cfg.full_ranking and (
            self.cfg.full_ranking_every_epoch or "_full_" in self.monitor
        )
        self.sign = 1.0 if self.cfg.monitor_mode == "max" else -1.0
        # state that a checkpoint carries
        self.epoch = 0
        self.best_value = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ steps
    def _loss_bce(self, batch, labels, weights=None) -> torch.Tensor:
        logits = self.model(batch).squeeze(-1)  # (B,)
        if weights is None:
            return F.binary_cross_entropy_with_logits(logits, labels)
        per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (weights * per_row).mean()

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        rows = self.train_ds.sample_epoch(epoch, self.config.seed)
        generator = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        torch.manual_seed(_epoch_seed(self.config.seed, epoch) + 1)  # dropout
        # the epoch's rows go to the device once; batches are gathered there, by indices
        # that are there too, so the loop below makes no host copies and no host syncs
        rows = rows.to(self.device)
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        if cfg.loss == "bce":
            batches = self._row_batches(rows, generator)
        else:
            batches = self._grouped_batches(rows, generator)
        progress = _Progress(len(rows), epoch, cfg.num_epochs) if _Progress.enabled() else None
        for batch, labels, weights in batches:
            if cfg.loss == "bce":
                loss = self._loss_bce(batch, labels, weights)
            else:
                loss = self._loss_grouped(batch, cfg.loss, weights)
            if cfg.l2_embedding > 0:
                loss = loss + cfg.l2_embedding * self.model.get_l2_reg_loss()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += loss.detach()
            count += 1
            if progress is not None:
                progress.update(labels.shape[0], total, count)
        if progress is not None:
            progress.close()
        mean_loss = float(total) / max(count, 1)
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"training loss became {mean_loss} in epoch {epoch}; lower "
                f"training.learning_rate (now {cfg.learning_rate}) or set training.grad_clip_norm"
            )
        return mean_loss

    def _row_batches(self, rows, generator):
        """Shuffled batches of rows, (features, labels, weights (B,) or None)."""
        for index in rows.shuffled_batch_indices(
            self.cfg.batch_size, generator, device=self.device
        ):
            batch, labels = rows.take(index)
            yield batch, labels, None if self.row_weights is None else self.row_weights[index]

    def _grouped_batches(self, rows, generator):
        """Batches of whole groups: b positives followed by their b*K negatives.

        Yields (features, labels, weights (b,) of the groups or None).
        """
        n = self.train_ds.num_positives
        k = self.train_ds.num_negatives
        per_batch = max(1, self.cfg.batch_size // (1 + k))
        order = torch.randperm(n, generator=generator)
        # every group's rows (n, 1 + K): positive, its negatives; moved once, sliced per batch
        all_groups = self.train_ds.group_rows(order).to(self.device)
        order = order.to(self.device)
        for start in range(0, n, per_batch):
            pos = order[start : start + per_batch]  # (b,)
            groups = all_groups[start : start + per_batch]  # (b, 1 + K)
            # the b positives first, then their negatives group by group (as _loss_grouped reads)
            batch, labels = rows.take(torch.cat([groups[:, 0], groups[:, 1:].reshape(-1)]))
            weights = None if self.positive_weights is None else self.positive_weights[pos]
            yield batch, labels, weights

    def _loss_grouped(self, batch, loss: str, weights=None) -> torch.Tensor:
        """bpr: mean of -log sigmoid(pos - neg_j); softmax: -log softmax over [pos, negs].

        With weights (b,), the mean over groups is weighted.
        """
        k = self.train_ds.num_negatives
        logits = self.model(batch).squeeze(-1)  # (b + b*K,)
        b = logits.shape[0] // (1 + k)
        pos, neg = logits[:b], logits[b:].view(b, k)  # (b,), (b, K)
        if loss == "bpr":
            pairs = -F.logsigmoid(pos.unsqueeze(1) - neg)  # (b, K)
            return pairs.mean() if weights is None else (weights * pairs.mean(dim=1)).mean()
        group = torch.cat([pos.unsqueeze(1), neg], dim=1)  # (b, 1 + K), positive first
        target = torch.zeros(b, dtype=torch.long, device=group.device)
        if weights is None:
            return F.cross_entropy(group, target)
        return (weights * F.cross_entropy(group, target, reduction="none")).mean()

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and saved: the moving average if enabled."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------ checkpoints
    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by this trainer (best.pt or last.pt)."""
        restore_trainer_state(self, path)

    def _notify(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    # -------------------------------------------------------------------- fit
    def fit(self) -> dict[str, Any]:
        """Train until num_epochs or early stopping; return the summary dict."""
        cfg = self.cfg
        context = TrainingContext(
            config=self.config,
            schema=self.schema,
            model=self.model,
            num_params=sum(p.numel() for p in self.model.parameters()),
            device=str(self.device),
            checkpoint_dir=self.checkpoint_dir,
            val_split=self.val_ds,
            test_split=self.test_ds,
            preprocessor=self.preprocessor,
            train_interactions=self.train_interactions,
        )
        try:
            if cfg.resume_from:
                self.resume(cfg.resume_from)
            self._notify("on_train_begin", context)
            stopped_early = False
            while self.epoch < cfg.num_epochs:
                epoch = self.epoch + 1
                t0 = time.perf_counter()
                train_loss = self._train_epoch(epoch)
                train_seconds = time.perf_counter() - t0
                lr = self.optimizer.param_groups[0]["lr"]
                metrics: dict[str, float] = {"train_loss": train_loss, "lr": lr}
                t1 = time.perf_counter()
                if self.val_evaluator is not None:
                    metrics.update(
                        self.val_evaluator.evaluate(
                            self.eval_model, full_ranking=self.full_ranking_each_epoch
                        )
                    )
                metrics["epoch_seconds"] = train_seconds
                metrics["eval_seconds"] = time.perf_counter() - t1
                self.epoch = epoch
                self.history.append({"epoch": epoch, **metrics})
                value = self.sign * metrics[self.monitor]
                improved = value > self.best_value
                if improved:
                    self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
                else:
                    self.bad_epochs += 1
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(metrics[self.monitor])
                elif self.scheduler is not None:
                    self.scheduler.step()
                logger.info(
                    "epoch %d/%d train_loss %.4f %s %.4f val_auc %.4f%s (%.1fs + eval %.1fs)",
                    epoch,
                    cfg.num_epochs,
                    train_loss,
                    self.monitor,
                    metrics[self.monitor],
                    metrics.get("val_auc", float("nan")),
                    " *" if improved else "",
                    train_seconds,
                    metrics["eval_seconds"],
                )
                self._notify("on_epoch_end", epoch, metrics)
                state = trainer_state(self)
                last = save_checkpoint(state, self.checkpoint_dir / "last.pt")
                self._notify("on_checkpoint", epoch, last, False)
                if improved:
                    best = save_checkpoint(state, self.checkpoint_dir / "best.pt")
                    self._notify("on_checkpoint", epoch, best, True)
                if cfg.early_stopping_patience and self.bad_epochs >= cfg.early_stopping_patience:
                    logger.info(
                        "early stopping after epoch %d: %s has not improved for %d epochs "
                        "(best %.4f at epoch %d)",
                        epoch,
                        self.monitor,
                        self.bad_epochs,
                        self.sign * self.best_value,
                        self.best_epoch,
                    )
                    stopped_early = True
                    break
            summary = self._finish(stopped_early)
        except BaseException as exc:
            self._notify("on_exception", exc)
            raise
        self._notify("on_train_end", summary)
        return summary

    def _finish(self, stopped_early: bool) -> dict[str, Any]:
        best_path = self.checkpoint_dir / "best.pt"
        if best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path, self.device)["model_state"])
        elif self.ema is not None:  # no epoch ran: hand back the averaged weights all the same
            self.model.load_state_dict(self.ema.module.state_dict())
        summary: dict[str, Any] = {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epoch,
            "stopped_early": stopped_early,
            "seconds_per_epoch": (
                sum(h["epoch_seconds"] for h in self.history) / max(len(self.history), 1)
            ),
            "best_checkpoint": str(best_path),
            "last_checkpoint": str(self.checkpoint_dir / "last.pt"),
        }
        best_row = next((h for h in self.history if h["epoch"] == self.best_epoch), None)
        val = self.val_evaluator
        if best_row is not None and val is not None and val.full_ranking:
            if not self.full_ranking_each_epoch:  # the best weights are in self.model now
                best_row.update(val.evaluate(self.model, full_ranking=True, sampled=False))
        if best_row is not None:
            for key, value in best_row.items():
                if key.startswith("val_"):
                    summary[f"best_{key}"] = value
        if self.test_evaluator is not None:
            summary.update(self.test_evaluator.evaluate(self.model))
        return summary
