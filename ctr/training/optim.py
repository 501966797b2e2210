"""The Trainer's optimizer, learning-rate scheduler and weight average, built from
the training config."""

from __future__ import annotations

import torch


def ema_update(decay: float):
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


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model's trainable parameters (cfg: TrainingConfig)."""
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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg):
    """The learning-rate scheduler cfg.scheduler names, or None."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.num_epochs)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.monitor_mode, factor=cfg.gamma, patience=max(1, cfg.step_size // 5)
        )
    return None
