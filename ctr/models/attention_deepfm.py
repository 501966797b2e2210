"""DeepFM whose deep part also reads AutoInt self-attention over the fields."""

from __future__ import annotations

import torch
from torch import nn

from ctr.models.base import BaseCTRModel, register_model
from ctr.models.layers import DNN, FMInteraction, MultiHeadSelfAttention


@register_model("attention_deepfm")
class AttentionDeepFM(BaseCTRModel):
    """DeepFM (Guo et al., IJCAI 2017) with AutoInt interacting layers (Song et al., CIKM 2019).

        y = w_0 + sum_i w_i(x_i) + sum_{i<j} <e_i, e_j>
            + w_out^T DNN([flatten(MHSA(e_1..e_F)); e_1; ...; e_F]) + b_out

    MHSA is the stack of AutoInt interacting layers (eqs. 5-8 of AutoInt) over the
    F fields in the shared space of size D (config.fm.embed_dim, layers
    config.attention); each layer maps (B, F, D) -> (B, F, D). Its flattened
    output (F * D) is concatenated with the own-dim embeddings (sum of the field
    dims) and fed to the DNN (config.dnn). Returns the logit.
    """

    config_sections = ("fm", "attention", "dnn")
    inference_chunk_rows = 1024  # attention scores and DNN input are wide per row

    def _build_components(self) -> None:
        att, dnn_cfg = self.config.attention, self.config.dnn
        self.fm = FMInteraction()
        self.attention = MultiHeadSelfAttention(
            self.config.fm.embed_dim,
            att.num_heads,
            att.attention_dim,
            att.num_layers,
            use_residual=att.use_residual,
        )
        attention_flat_dim = self.schema.num_fields * self.attention.output_dim
        self.dnn = DNN(
            attention_flat_dim + self.embedding.total_embedding_dim,
            dnn_cfg.hidden_units,
            activation=dnn_cfg.activation,
            dropout=dnn_cfg.dropout,
            use_batch_norm=dnn_cfg.use_batch_norm,
        )
        self.dnn_out = nn.Linear(self.dnn.output_dim, 1)

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        attended = self.attention(field_embeddings).flatten(1)  # (B, F * D)
        deep_in = torch.cat([attended, flat_embeddings], dim=1)  # (B, F * D + sum d_f)
        y_dnn = self.dnn_out(self.dnn(deep_in))  # (B, 1)
        return first_order + self.fm(field_embeddings) + y_dnn
