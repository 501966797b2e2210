"""xDeepFM (Lian et al., KDD 2018)."""

from __future__ import annotations

import torch
from torch import nn

from ctr.models.base import BaseCTRModel, register_model
from ctr.models.layers import CIN


@register_model("xdeepfm")
class xDeepFM(BaseCTRModel):  # noqa: N801 (the paper's spelling)
    """xDeepFM: linear part + CIN (explicit) + DNN (implicit), eq. 9 of the paper.

        y = sigmoid(w_linear^T a + w_dnn^T x_dnn^k + w_cin^T p^+ + b)

    `a` is the raw features (our first-order term, bias included), p^+ the
    concatenated sum-pooled CIN feature maps over the fields in the shared space
    (config.fm.embed_dim, layers config.cin) and x_dnn^k the last DNN layer over
    the concatenated own-dim embeddings (config.dnn). Returns the logit.
    """

    config_sections = ("fm", "cin", "dnn")
    inference_chunk_rows = 1024  # CIN builds a (rows, D, H * F) outer product per layer

    def _build_components(self) -> None:
        cin_cfg = self.config.cin
        self.cin = CIN(
            self.schema.num_fields,
            self.config.fm.embed_dim,
            cin_cfg.layer_sizes,
            split_half=cin_cfg.split_half,
        )
        self.cin_out = nn.Linear(self.cin.output_dim, 1)
        self._build_dnn_head(self.embedding.total_embedding_dim)

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        y_cin = self.cin_out(self.cin(field_embeddings))  # (B, 1)
        return first_order + y_cin + self._dnn_logit(flat_embeddings)  # (B, 1)
