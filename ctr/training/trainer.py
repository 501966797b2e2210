"""The Trainer: optimisation, evaluation, early stopping, checkpoints, callbacks.

The model owns no infrastructure; everything that is not the forward pass lives
here. One epoch:

    rows = train_ds.sample_epoch(epoch, seed)        # positives + fresh negatives (indices)
    for batch in rows (permuted, batch_size):        # ctr.training.batches, gathered per batch
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

Under torchrun (inside ctr.training.distributed.process_group, which `fit` opens)
each rank trains its part of every batch of the same epoch rows, the gradients
are averaged by DistributedDataParallel, and rank 0 alone evaluates, calls the
callbacks and writes checkpoints; ctr.training.distributed says how.
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
from ctr.training import distributed
from ctr.training.batches import grouped_batches, row_batches
from ctr.training.callbacks import Callback, TrainingContext
from ctr.training.device import resolve_device
from ctr.training.evaluator import RankingEvaluator
from ctr.training.optim import build_optimizer, build_scheduler, ema_update
from ctr.training.progress import _Progress
from ctr.training.state import new_checkpoint_dir, restore_trainer_state, trainer_state
from ctr.utils import get_logger, load_checkpoint, save_checkpoint

logger = get_logger("ctr.trainer")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


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
        self.device = distributed.local_device(resolve_device(self.cfg.device))
        self.model = model.to(self.device)
        # under torchrun: the DistributedDataParallel wrapper the training steps call
        self.ddp_model = distributed.wrap_model(self.model, self.device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0  # evaluates, calls the callbacks, writes checkpoints
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.ema: AveragedModel | None = None
        if self.cfg.ema_decay is not None:
            self.ema = AveragedModel(
                self.model,
                multi_avg_fn=ema_update(self.cfg.ema_decay),
                use_buffers=True,
            )
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
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
    @property
    def train_model(self) -> torch.nn.Module:
        """What the training steps call: the DDP wrapper under torchrun, else the model."""
        return self.model if self.ddp_model is None else self.ddp_model

    def _loss_bce(self, batch, labels, weights=None) -> torch.Tensor:
        logits = self.train_model(batch).squeeze(-1)  # (B,)
        if weights is None:
            return F.binary_cross_entropy_with_logits(logits, labels)
        per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (weights * per_row).mean()

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        rows = self.train_ds.sample_epoch(epoch, self.config.seed)
        generator = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        # dropout; each rank masks its own rows with its own stream (rank 0: a single process's)
        torch.manual_seed(_epoch_seed(self.config.seed, epoch) + 1 + self.rank)
        # the epoch's sampled items go to the device (the feature tables once per run);
        # batches are gathered there, by indices that are there too, so the loop below
        # makes no host copies and no host syncs
        rows = rows.to(self.device)
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        if cfg.loss == "bce":
            batches = row_batches(rows, generator, cfg.batch_size, self.row_weights, self.device)
        else:
            batches = grouped_batches(
                self.train_ds, rows, generator, cfg.batch_size, self.positive_weights, self.device
            )
        show = self.is_main and _Progress.enabled()
        progress = _Progress(len(rows), epoch, cfg.num_epochs) if show else None
        for batch, labels, weights, scale in batches:
            distributed.fault_point()  # CTR_DIST_FAULT, for tests
            if cfg.loss == "bce":
                loss = self._loss_bce(batch, labels, weights)
            else:
                loss = self._loss_grouped(batch, cfg.loss, weights)
            if scale != 1.0:  # this rank's share of the global batch (distributed.shard)
                loss = loss * scale
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
                progress.update(labels.shape[0] * self.world_size, total, count)
        if progress is not None:
            progress.close()
        # every rank ran as many batches; the ranks' mean is the global batches' mean loss
        mean_loss = float(distributed.mean_over_ranks(total)) / max(count, 1)
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"training loss became {mean_loss} in epoch {epoch}; lower "
                f"training.learning_rate (now {cfg.learning_rate}) or set training.grad_clip_norm"
            )
        return mean_loss

    def _loss_grouped(self, batch, loss: str, weights=None) -> torch.Tensor:
        """bpr: mean of -log sigmoid(pos - neg_j); softmax: -log softmax over [pos, negs].

        With weights (b,), the mean over groups is weighted.
        """
        k = self.train_ds.num_negatives
        logits = self.train_model(batch).squeeze(-1)  # (b + b*K,)
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
        if not self.is_main:  # one rank reports: callbacks log and track
            return
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
                if self.val_evaluator is not None and self.is_main:  # the others wait below
                    metrics.update(
                        self.val_evaluator.evaluate(
                            self.eval_model, full_ranking=self.full_ranking_each_epoch
                        )
                    )
                metrics["epoch_seconds"] = train_seconds
                metrics["eval_seconds"] = time.perf_counter() - t1
                # every rank keeps rank 0's metrics: the same best epoch, scheduler steps
                metrics = distributed.broadcast_object(metrics)
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
                stop = bool(cfg.early_stopping_patience) and (
                    self.bad_epochs >= cfg.early_stopping_patience
                )
                if self.is_main:
                    self._report_epoch(epoch, metrics, improved, stop)
                if distributed.broadcast_object(stop):  # rank 0's decision, on every rank
                    stopped_early = True
                    break
            summary = self._finish(stopped_early) if self.is_main else None
            summary = distributed.broadcast_object(summary)  # the others wait for rank 0's
        except BaseException as exc:
            failure = distributed.peer_failure(exc)  # another rank died: name it
            self._notify("on_exception", exc if failure is None else failure)
            if failure is None:
                raise
            raise failure from exc
        self._notify("on_train_end", summary)
        return summary

    def _report_epoch(
        self, epoch: int, metrics: dict[str, float], improved: bool, stop: bool
    ) -> None:
        """Log the epoch, tell the callbacks, write last.pt (and best.pt): rank 0's work."""
        logger.info(
            "epoch %d/%d train_loss %.4f %s %.4f val_auc %.4f%s (%.1fs + eval %.1fs)",
            epoch,
            self.cfg.num_epochs,
            metrics["train_loss"],
            self.monitor,
            metrics[self.monitor],
            metrics.get("val_auc", float("nan")),
            " *" if improved else "",
            metrics["epoch_seconds"],
            metrics["eval_seconds"],
        )
        self._notify("on_epoch_end", epoch, metrics)
        state = trainer_state(self)
        last = save_checkpoint(state, self.checkpoint_dir / "last.pt")
        self._notify("on_checkpoint", epoch, last, False)
        if improved:
            best = save_checkpoint(state, self.checkpoint_dir / "best.pt")
            self._notify("on_checkpoint", epoch, best, True)
        if stop:
            logger.info(
                "early stopping after epoch %d: %s has not improved for %d epochs "
                "(best %.4f at epoch %d)",
                epoch,
                self.monitor,
                self.bad_epochs,
                self.sign * self.best_value,
                self.best_epoch,
            )

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
