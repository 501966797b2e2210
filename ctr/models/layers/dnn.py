"""Multi-layer perceptron used as the deep part of DeepFM-style models."""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "prelu")


def make_activation(name: str, num_units: int) -> nn.Module:
    """A fresh activation module by name (prelu learns one slope per unit)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "prelu":
        return nn.PReLU(num_units)
    raise ValueError(f"expected activation in {_ACTIVATIONS}, got {name!r}")


class DNN(nn.Module):
    """Linear -> (BatchNorm1d) -> activation -> Dropout, once per hidden layer.

    With batch norm the Linear layers have no bias (the norm's shift replaces it).

    Args:
        input_dim: size of the input vector.
        hidden_units: sizes of the hidden layers, e.g. [256, 128, 64].
        activation: "relu", "gelu", "tanh", "sigmoid" or "prelu".
        dropout: dropout probability after each activation (0 disables it).
        use_batch_norm: insert BatchNorm1d after each Linear.

    Shapes:
        (B, input_dim) -> (B, output_dim), output_dim = hidden_units[-1]

    Example:
        DNN(112, [256, 128, 64], dropout=0.2)(torch.randn(32, 112)).shape  # (32, 64)
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        use_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"expected input_dim >= 1, got {input_dim}")
        if not hidden_units or any(u < 1 for u in hidden_units):
            raise ValueError(f"expected a non-empty list of positive sizes, got {hidden_units}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected 0 <= dropout < 1, got {dropout}")
        layers: list[nn.Module] = []
        prev = input_dim
        for units in hidden_units:
            layers.append(nn.Linear(prev, units, bias=not use_batch_norm))
            if use_batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(make_activation(activation, units))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = units
        self.layers = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.output_dim = hidden_units[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, output_dim)
