"""Factorization Machine (Rendle, ICDM 2010)."""

from __future__ import annotations

import torch

from ctr.models.base import BaseCTRModel, register_model
from ctr.models.layers import FMInteraction


@register_model("fm")
class FM(BaseCTRModel):
    """Factorization Machine, eq. 1 of Rendle (2010):

        y = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j

    computed over fields: v_i x_i is field i's embedding in the shared space
    (config.fm.embed_dim), and the pairwise sum uses the O(F * D) identity of
    FMInteraction.
    """

    config_sections = ("fm",)

    def _build_components(self) -> None:
        self.fm = FMInteraction()

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        return first_order + self.fm(field_embeddings)  # (B, 1)
