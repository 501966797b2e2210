"""DeepFM whose deep part also reads AutoInt self-attention over the fields."""

from __future__ import annotations

import torch

from ctr.models.base import BaseCTRModel, register_model
from ctr.models.layers import FMInteraction, MultiHeadSelfAttention


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
        att = self.config.attention
        self.fm = FMInteraction()
        self.attention = MultiHeadSelfAttention(
            self.config.fm.embed_dim,
            att.num_heads,
            att.attention_dim,
            att.num_layers,
            use_residual=att.use_residual,
        )
        attention_flat_dim = self.schema.num_fields * self.attention.output_dim
        self._build_dnn_head(attention_flat_dim + self.embedding.total_embedding_dim)

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        attended = self.attention(field_embeddings).flatten(1)  # (B, F * D)
        deep_in = torch.cat([attended, flat_embeddings], dim=1)  # (B, F * D + sum d_f)
        return first_order + self.fm(field_embeddings) + self._dnn_logit(deep_in)  # (B, 1)
