"""Multi-layer perceptron used as the deep part of DeepFM-style models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p).

    The semantics of nn.Dropout (identity in eval mode, E[output] = input in
    training), with a cheaper mask on CPU. nn.Dropout draws one float Bernoulli
    sample per element, and on CPU at batch 1024 that was about 40% of a DeepFM
    training step. Here one 64-bit draw of the torch generator gives four 16-bit
    integers, and an element is kept when its integer is at least k, where
    k = round(p * 2^16): the drop probability is k / 2^16, p rounded to a multiple
    of 2^-16 (within 8e-6 of p), and the scale 1 / (1 - k / 2^16) keeps the
    expectation exact. The draws come from torch's default generator, so
    torch.manual_seed makes the masks reproducible. On other devices it calls
    torch.nn.functional.dropout, whose kernels there are already fused.

    Shapes:
        (*) -> (*), the same shape

    Example:
        Dropout(0.2)(torch.randn(32, 64)).shape  # (32, 64)
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        k = round(p * 65536)
        if not 0.0 <= p < 1.0 or k >= 65536:
            raise ValueError(f"expected 0 <= p < 1 - 2**-17, got {p}")
        self.p = p
        self._active = k > 0  # p < 2^-17 rounds to 0: identity
        self._threshold = k - 32768  # kept where the signed 16-bit draw is >= this
        self._scale = 1.0 / (1.0 - k / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._active:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64)
        words.random_(-(2**63), None)  # the full 64-bit range: every bit uniform
        bits = words.view(torch.int16)[:n].view(x.shape)  # (*) uniform on [-2^15, 2^15)
        # keep = bits >= t, as 0/1 by clamping to [t - 1, t]: on CPU a comparison's bool
        # result and its conversion to float are each several times slower than this
        t = self._threshold
        keep = bits.clamp(t - 1, t).sub_(t - 1)  # (*) int16, 1 where kept
        return x * keep.to(x.dtype).mul_(self._scale)  # (*) x / (1 - p) or 0

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DNN(nn.Module):
    """Linear -> (BatchNorm1d) -> activation -> Dropout, once per hidden layer.

    Dropout is this module's `Dropout` (inverted dropout with a cheaper mask on CPU),
    or torch's nn.Dropout with fast_dropout=False: the same semantics, but another
    random stream, so seeded runs give other numbers with each.

    With batch norm the Linear layers have no bias (the norm's shift replaces it).

    Args:
        input_dim: size of the input vector.
        hidden_units: sizes of the hidden layers, e.g. [256, 128, 64].
        activation: "relu", "gelu", "tanh", "sigmoid" or "prelu".
        dropout: dropout probability after each activation (0 disables it).
        use_batch_norm: insert BatchNorm1d after each Linear.
        fast_dropout: use `Dropout` (cheaper CPU mask); False uses nn.Dropout.

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
        fast_dropout: bool = True,
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
                layers.append(Dropout(dropout) if fast_dropout else nn.Dropout(dropout))
            prev = units
        self.layers = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.output_dim = hidden_units[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, output_dim)
