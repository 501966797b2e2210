"""Which torch device training and evaluation run on."""

from __future__ import annotations

import torch

from ctr.config import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device=cuda but CUDA is not available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("training.device=mps but MPS is not available; use auto or cpu")
    return torch.device(name)
