"""Logistic regression: the first-order term alone."""

from __future__ import annotations

import torch

from ctr.models.base import BaseCTRModel, register_model


@register_model("lr")
class LR(BaseCTRModel):
    """Logistic regression on the fields (the linear part of every other model).

        y = w_0 + sum_i w_i(x_i)

    w_i is the first-order embedding of field i (value * weight for dense fields,
    a pooled weight for sequence fields). No second-order embeddings are built.
    """

    uses_embeddings = False
    config_sections = ()  # fm.embed_dim is unused without second-order embeddings

    def _build_components(self) -> None:
        pass

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        return first_order  # (B, 1)
