"""SASRec (Kang & McAuley, ICDM 2018)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ctr.data.schema import DatasetSchema, FeatureType
from ctr.errors import CTRError
from ctr.models.base import BaseCTRModel, register_model
from ctr.models.layers import FeatureEmbedding


@register_model("sasrec")
class SASRec(BaseCTRModel):
    """Self-attentive sequential recommendation: the history alone predicts the next item.

        F = SelfAttentionEncoder(E[h_1..h_L])          (sec. III-B, III-C)
        y = <F_L, E[c]> + b_c + b_0                    (eq. 6, plus biases)

    E is one item table of size config.history.hidden_dim, shared by the history
    h and the candidate c (the paper's shared item embedding, sec. III-D). F_L is
    the encoder's output at the last position, the most recent item; the encoder
    has config.history.num_layers blocks of num_heads heads and dropout. The model
    reads only the `history` field and the field whose indices it holds (movie_id);
    the other fields are ignored. Returns the logit.

    Besides the paper's inner product, the logit carries a global bias b_0, the
    candidate's item bias b_c, and the mean item bias of the history (a per-user
    offset: it does not change how a user's candidates rank).
    """

    # Reads config.history, which is not listed here: a section no model lists is
    # logged for every run (experiments.tracking.unused_config_sections), and the
    # history section matters to every model once history.enabled is true.
    config_sections = ()

    def _build_embedding(self) -> FeatureEmbedding:
        history = self.schema.fields.get("history")
        if (
            history is None
            or history.feature_type is not FeatureType.SEQUENCE
            or not history.shares
        ):
            raise CTRError(
                f"model 'sasrec' predicts from the behaviour history, but the schema has no "
                f"'history' field (fields: {self.schema.field_names}); set "
                f"history.enabled=true"
            )
        d = self.config.history.hidden_dim
        item = replace(self.schema[history.shares], embedding_dim=d)
        # The two fields the model reads, at the model's width: (B, 2, d) = [c, user state].
        schema = DatasetSchema(
            (item, replace(history, embedding_dim=d)), label_field=self.schema.label_field
        )
        pooling = self._history_pooling(schema[history.name], "last")
        return FeatureEmbedding(schema, d, sequence_pooling={history.name: pooling})

    def _build_components(self) -> None:
        pass

    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        candidate, user = field_embeddings.unbind(1)  # (B, d) each
        return first_order + (user * candidate).sum(1, keepdim=True)  # (B, 1)
