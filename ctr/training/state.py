"""A Trainer's checkpoint: what it holds, and continuing a run from one.

A checkpoint carries the evaluated weights (`model_state`: the moving average
when training.ema_decay is set), the optimizer and scheduler, the early-stopping
counters and the history, plus the config and schema that rebuild the model.
With a moving average, `train_model_state` keeps the trained weights so a
resumed run continues exactly.

Every value is a tensor or a plain value (numbers, strings, None, and lists and
dicts of them): the config is `model_dump(mode="json")`, the schema `to_dict()`,
and the history holds Python floats. That lets load_checkpoint read a file with
torch.load(weights_only=True), so resuming from, or evaluating, a checkpoint
from elsewhere cannot run code; save_checkpoint refuses any other value.

No random number generator state is saved: the Trainer reseeds the sampler,
the batch order and dropout from (seed, epoch) at the start of every epoch,
so the epoch number is all a resumed run needs to draw what the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctr.config import ExperimentConfig
from ctr.errors import CTRError
from ctr.utils import get_logger, load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # for annotations only: ctr.training.trainer imports this module
    from ctr.training.trainer import Trainer

logger = get_logger("ctr.trainer")

CHECKPOINT_VERSION = 1


def new_checkpoint_dir(config: ExperimentConfig) -> Path:
    """A fresh directory for a run's best.pt / last.pt under training.checkpoint_dir."""
    # pid + random suffix: runs started in the same second (e.g. parallel
    # seeds) must never share, and overwrite, each other's best.pt
    stamp = time.strftime("%Y%m%d-%H%M%S")
    unique = f"{os.getpid()}-{secrets.token_hex(3)}"
    return Path(config.training.checkpoint_dir) / f"{config.model_name}-{stamp}-{unique}"


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """The dict a checkpoint (best.pt, last.pt) holds for `trainer` as it is now."""
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": trainer.epoch,
        "model_name": trainer.config.model_name,
        "config": trainer.config.model_dump(mode="json"),
        "schema": trainer.schema.to_dict(),
        "model_state": trainer.eval_model.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "scheduler_state": trainer.scheduler.state_dict() if trainer.scheduler else None,
        "best_value": trainer.best_value,
        "best_epoch": trainer.best_epoch,
        "bad_epochs": trainer.bad_epochs,
        "history": trainer.history,
    }
    if trainer.ema is not None:
        state["train_model_state"] = trainer.model.state_dict()
        state["ema_num_averaged"] = int(trainer.ema.n_averaged)
    return state


def restore_trainer_state(trainer: Trainer, path: str | Path) -> None:
    """Load the checkpoint at `path` into `trainer`, which continues from its epoch."""
    state = load_checkpoint(path, trainer.device)
    if state.get("model_name") != trainer.config.model_name:
        raise CTRError(
            f"checkpoint {path} holds model {state.get('model_name')!r}, "
            f"but the config trains {trainer.config.model_name!r}"
        )
    trainer.model.load_state_dict(state.get("train_model_state", state["model_state"]))
    # a checkpoint trained without an average starts one here (n_averaged is still 0,
    # so the next step copies the weights in)
    if trainer.ema is not None and "train_model_state" in state:
        trainer.ema.module.load_state_dict(state["model_state"])
        trainer.ema.n_averaged.fill_(state["ema_num_averaged"])
    trainer.optimizer.load_state_dict(state["optimizer_state"])
    if trainer.scheduler is not None and state.get("scheduler_state") is not None:
        trainer.scheduler.load_state_dict(state["scheduler_state"])
    trainer.epoch = state["epoch"]
    trainer.best_value = state["best_value"]
    trainer.best_epoch = state["best_epoch"]
    trainer.bad_epochs = state["bad_epochs"]
    trainer.history = list(state["history"])
    # keep the best epoch's weights reachable from this run's directory (rank 0 alone
    # writes checkpoints; under torchrun every rank loads the same file above)
    source_best = Path(path).parent / "best.pt"
    target_best = trainer.checkpoint_dir / "best.pt"
    copy = trainer.is_main and source_best.is_file()
    if copy and source_best.resolve() != target_best.resolve():
        save_checkpoint(load_checkpoint(source_best, "cpu"), target_best)
    if trainer.is_main:
        logger.info("resumed from %s at epoch %d", path, trainer.epoch)
