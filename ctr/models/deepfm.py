"""DeepFM (Guo et al., IJCAI 2017)."""

from __future__ import annotations

import torch

from ctr.models.base import BaseCTRModel, register_model
from ctr.models.layers import FMInteraction


@register_model("deepfm")
class DeepFM(BaseCTRModel):
    """DeepFM: an FM and a DNN sharing the same field embeddings (eq. 1 of the paper).

        y = sigmoid(y_FM + y_DNN)
        y_FM  = w_0 + sum_i w_i(x_i) + sum_{i<j} <e_i, e_j>
        y_DNN = w_out^T DNN([e_1; ...; e_F]) + b_out

    The FM part uses the fields in the shared space (config.fm.embed_dim); the
    DNN reads the concatenation of each field's own-dim embedding. The model
    returns the logit y_FM + y_DNN.
    """

    config_sections = ("fm", "dnn")

    def _build_components(self) -> None:
        self.fm = FMInteraction()
        self._build_dnn_head(self.embedding.total_embedding_dim)

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        y_fm = first_order + self.fm(field_embeddings)  # (B, 1)
        return y_fm + self._dnn_logit(flat_embeddings)  # (B, 1)
