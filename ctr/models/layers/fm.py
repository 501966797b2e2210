"""Factorization-machine pairwise interaction (Rendle, ICDM 2010)."""

from __future__ import annotations

import torch
from torch import nn


class FMInteraction(nn.Module):
    """Sum of inner products over all field pairs, in O(F * D).

        sum_{i<j} <e_i, e_j> = 1/2 * sum_d [ (sum_i e_{i,d})^2 - sum_i e_{i,d}^2 ]

    Shapes:
        (B, F, D) -> (B, 1)

    Example:
        FMInteraction()(torch.randn(32, 7, 16)).shape  # (32, 1)
    """

    def forward(self, field_embeddings: torch.Tensor) -> torch.Tensor:
        if field_embeddings.dim() != 3:
            raise ValueError(
                f"expected field embeddings of shape (B, F, D), got {tuple(field_embeddings.shape)}"
            )
        square_of_sum = field_embeddings.sum(dim=1).square()  # (B, D)
        sum_of_squares = field_embeddings.square().sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1, keepdim=True)  # (B, 1)
