"""BaseCTRModel: the embedding layer plus model-specific components, returning logits.

A model is built from a DatasetSchema and an ExperimentConfig only, so it can
be re-created anywhere from the artifacts of a run; both are kept on the model
(plain picklable objects) and travel with it when it is pickled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from ctr.config import ExperimentConfig
from ctr.data.schema import DatasetSchema, FieldSchema
from ctr.errors import CTRError
from ctr.models.layers import DNN, FeatureEmbedding, HistoryPooling

MODEL_REGISTRY: dict[str, type[BaseCTRModel]] = {}


def register_model(name: str):
    """Class decorator: add a BaseCTRModel subclass to MODEL_REGISTRY under `name`."""

    def decorator(cls: type[BaseCTRModel]) -> type[BaseCTRModel]:
        if not (isinstance(cls, type) and issubclass(cls, BaseCTRModel)):
            raise ValueError(f"expected a BaseCTRModel subclass for {name!r}, got {cls!r}")
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ValueError(
                f"model name {name!r} is already registered to {MODEL_REGISTRY[name].__name__}; "
                f"choose another name"
            )
        cls.model_name = name
        MODEL_REGISTRY[name] = cls
        return cls

    return decorator


class BaseCTRModel(nn.Module, ABC):
    """Abstract CTR model: forward(batch) -> logits (B, 1).

    Subclasses build their layers in `_build_components` (self.schema, self.config
    and self.embedding are available) and combine the embedding outputs in
    `_forward_components`. Optimizer, device, checkpoints and logging belong to
    the trainer, not the model.

    A behaviour-history field (a sequence field that `shares` the movie_id indices)
    is one more field: FeatureEmbedding pools it, with the HistoryPooling that
    config.history.pooling names, into one field embedding, which the FM, CIN,
    attention and DNN then read like any other.

    Args:
        schema: the input fields.
        config: the experiment config; the model reads config.fm.embed_dim, its own
            sections (dnn, cin, attention) and, with a history field, config.history.
    """

    model_name: ClassVar[str] = ""
    # Under no_grad in eval mode on CPU, larger batches are scored in chunks of this
    # many rows (see _inference_chunk); models with wide intermediates use less.
    inference_chunk_rows: ClassVar[int] = 8192
    # At most this many when a history pooling attends with the candidate (DIN):
    # its scorer's (rows, L, hidden) layers run on every history item of every row.
    history_attention_chunk_rows: ClassVar[int] = 1024
    # False for purely linear models: no second-order embeddings are built.
    uses_embeddings: ClassVar[bool] = True
    # Config sections the model reads besides data, features and training (which every
    # run uses); a tracked run logs only these of the model sections as params.
    config_sections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, schema: DatasetSchema, config: ExperimentConfig) -> None:
        super().__init__()
        if not isinstance(schema, DatasetSchema):
            raise ValueError(f"expected a DatasetSchema, got {type(schema).__name__}")
        if not isinstance(config, ExperimentConfig):
            raise ValueError(
                f"expected an ExperimentConfig (see ctr.config.load_config), "
                f"got {type(config).__name__}"
            )
        self.schema = schema
        self.config = config
        self.embedding = self._build_embedding()
        self._build_components()

    def _build_embedding(self) -> FeatureEmbedding:
        """The embedding layer over self.schema; with a history field, its pooling too."""
        pooling = {
            f.name: self._history_pooling(f, self.config.history.pooling)
            for f in self.schema.sequence_fields
            if f.shares is not None and self.uses_embeddings
        }
        return FeatureEmbedding(
            self.schema,
            self.config.fm.embed_dim,
            second_order=self.uses_embeddings,
            sequence_pooling=pooling or None,
        )

    def _history_pooling(self, field: FieldSchema, mode: str) -> HistoryPooling:
        """The HistoryPooling of history field `field` (items of its embedding_dim), from
        config.history. The encoder runs at the items' own width, so that its outputs
        stay in the item space where the candidate attends over them."""
        cfg = self.config.history
        if mode in ("self_attention", "last") and field.embedding_dim % cfg.num_heads:
            raise CTRError(
                f"history.num_heads={cfg.num_heads} must divide the history items' "
                f"embedding size {field.embedding_dim} (field {field.name!r}, the "
                f"embedding_dim of {field.shares!r}); choose a divisor of it"
            )
        return HistoryPooling(
            mode,
            field.embedding_dim,
            field.max_length,
            attention_hidden_units=cfg.attention_hidden_units,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
        )

    @abstractmethod
    def _build_components(self) -> None:
        """Create the model's layers."""

    @abstractmethod
    def _forward_components(
        self,
        first_order: torch.Tensor,
        field_embeddings: torch.Tensor | None,
        flat_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, 1), (B, F, D), (B, total_embedding_dim) -> logits (B, 1)."""

    def _build_dnn_head(self, input_dim: int) -> None:
        """The deep part of DeepFM-style models: `self.dnn`, the DNN of config.dnn over
        `input_dim` inputs, and `self.dnn_out`, its linear map to one logit.

        Their names are the state_dict keys of saved models (dnn.layers.0.weight,
        dnn_out.weight, ...); a model calls this where its other layers are built, so
        the order of creation (and a seeded initialisation) is that of its layers.
        """
        cfg = self.config.dnn
        self.dnn = DNN(
            input_dim,
            cfg.hidden_units,
            activation=cfg.activation,
            dropout=cfg.dropout,
            use_batch_norm=cfg.use_batch_norm,
            fast_dropout=cfg.fast_dropout,
        )
        self.dnn_out = nn.Linear(self.dnn.output_dim, 1)

    def _dnn_logit(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) -> the deep part's logit (B, 1); see _build_dnn_head."""
        return self.dnn_out(self.dnn(x))  # (B, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch dict of field tensors -> logits (B, 1)."""
        if not self.training and not torch.is_grad_enabled():
            rows = self._inference_chunk(batch)
            if rows:
                names = self.embedding.schema.field_names  # the fields the model reads
                n = batch[names[0]].shape[0]
                chunks = [{k: batch[k][i : i + rows] for k in names} for i in range(0, n, rows)]
                return torch.cat([self._forward_batch(chunk) for chunk in chunks])
        return self._forward_batch(batch)

    def _forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        first_order, field_embeddings, flat_embeddings = self.embedding(batch)
        return self._forward_components(first_order, field_embeddings, flat_embeddings)

    def _inference_chunk(self, batch: dict[str, torch.Tensor]) -> int:
        """Rows per chunk for scoring `batch` on CPU in chunks, or 0 to score it whole.

        Rows are scored independently in eval mode, so chunks give the same logits;
        on CPU they keep the intermediates cache-sized and the memory bounded, which
        is about 1.5-2x faster at the 65536-row batches of evaluation.
        """
        self.embedding.validate_batch(batch)
        n = batch[self.embedding.schema.field_names[0]].shape[0]
        on_cpu = self.embedding.bias.device.type == "cpu"
        rows = self.inference_chunk_rows
        poolings = self.embedding.sequence_pooling.values()
        if any(getattr(p, "attention", None) is not None for p in poolings):
            rows = min(rows, self.history_attention_chunk_rows)
        return rows if on_cpu and n > rows else 0

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Click probabilities (B, 1). Call .eval() first to turn dropout off."""
        return torch.sigmoid(self(batch))

    def get_l2_reg_loss(self) -> torch.Tensor:
        """Sum of squared embedding weights (tables and dense-field vectors), a scalar."""
        return sum(p.square().sum() for p in self.embedding.embedding_parameters())

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_fields={self.schema.num_fields}"
