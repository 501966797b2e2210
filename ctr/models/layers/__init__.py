"""Building blocks of the CTR models; each is tensor-in, tensor-out below the embedding."""

from ctr.models.layers.attention import InteractingLayer, MultiHeadSelfAttention
from ctr.models.layers.cin import CIN
from ctr.models.layers.dnn import DNN, make_activation
from ctr.models.layers.embedding import EmbeddingOutput, FeatureEmbedding
from ctr.models.layers.fm import FMInteraction
from ctr.models.layers.history import (
    HistoryPooling,
    SelfAttentionEncoder,
    TargetAttention,
    distinct_rows,
    masked_mean,
)

__all__ = [
    "CIN",
    "DNN",
    "EmbeddingOutput",
    "FMInteraction",
    "FeatureEmbedding",
    "HistoryPooling",
    "InteractingLayer",
    "MultiHeadSelfAttention",
    "SelfAttentionEncoder",
    "TargetAttention",
    "distinct_rows",
    "make_activation",
    "masked_mean",
]
