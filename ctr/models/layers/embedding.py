"""FeatureEmbedding: a batch dict of raw field tensors -> first-order term and embeddings.

Every field gets a second-order embedding of its own `embedding_dim` and a
first-order (dim 1) weight:

- sparse:   e = E[x],                     w = W[x]                      x: int64 (B,)
- sequence: e = pool_j E[x_j],            w = pool_j W[x_j]             x: int64 (B, L)
            (EmbeddingBag, padding index 0 excluded from the pool; all padding -> 0)
- dense:    e = x * v,                    w = x * u                     x: float (B,)

Index 0 is padding / unknown and embeds to zeros. Fields whose `embedding_dim`
differs from `fm_embed_dim` are projected into the shared interaction space by
their own `Linear(embedding_dim, fm_embed_dim)`.

For speed the sparse fields of equal `embedding_dim` live in one table and are
looked up together: row 0 is their common padding row and index i > 0 of a
field is row `offset_field + i`. Indices are not range-checked (that would scan
the data every batch); an index >= the field's vocabulary_size reads another
field's row, or raises IndexError past the end of the table. The encoders of
the data pipeline produce indices in range.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema


class EmbeddingOutput(NamedTuple):
    first_order: torch.Tensor  # (B, 1), global bias included
    field_embeddings: torch.Tensor | None  # (B, F, fm_embed_dim); None without second order
    flat_embeddings: torch.Tensor | None  # (B, sum of embedding_dim); None without second order


def _xavier_rows_(weight: torch.Tensor, fan_rows: int) -> None:
    """Xavier-uniform init of `weight` as if it were a (fan_rows, dim) table of its own."""
    bound = math.sqrt(6.0 / (fan_rows + weight.shape[-1]))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _shared_table(fields: list[FieldSchema], dim: int) -> tuple[nn.Embedding, list[int]]:
    """One table for `fields`: row 0 shared padding, then V_k - 1 rows per field.

    Returns the table and, per field, the offset added to its indices > 0.
    """
    offsets, start = [], 1
    for f in fields:
        offsets.append(start - 1)
        start += f.vocabulary_size - 1
    table = nn.Embedding(start, dim, padding_idx=0)
    for f, offset in zip(fields, offsets, strict=True):
        _xavier_rows_(table.weight[offset + 1 : offset + f.vocabulary_size], f.vocabulary_size)
    with torch.no_grad():
        table.weight[0].zero_()
    return table, offsets


def _bag(f: FieldSchema, dim: int) -> nn.EmbeddingBag:
    """Pooled table of a sequence field; padding (index 0) is left out of the pool."""
    bag = nn.EmbeddingBag(f.vocabulary_size, dim, mode=f.combiner, padding_idx=0)
    _xavier_rows_(bag.weight, f.vocabulary_size)
    with torch.no_grad():
        bag.weight[0].zero_()
    return bag


def _expectation(f: FieldSchema) -> tuple[str, FeatureType, int | None, str]:
    if f.feature_type is FeatureType.SEQUENCE:
        return f.name, f.feature_type, f.max_length, f"an int64 tensor of shape (B, {f.max_length})"
    if f.feature_type is FeatureType.SPARSE:
        return f.name, f.feature_type, None, "an int64 tensor of shape (B,)"
    return f.name, f.feature_type, None, "a float tensor of shape (B,)"


class FeatureEmbedding(nn.Module):
    """Embeds every field of `schema`; see the module docstring for the formulas.

    Args:
        schema: the fields, in the order of the outputs.
        fm_embed_dim: D, the size of the shared interaction space.
        second_order: build the second-order embeddings (False for a purely linear
            model: `field_embeddings` and `flat_embeddings` are then None).

    Shapes:
        forward(batch) with batch[name]: sparse int64 (B,), dense float (B,),
        sequence int64 (B, max_length); other keys are ignored. Returns
        EmbeddingOutput(first_order (B, 1), field_embeddings (B, F, D),
        flat_embeddings (B, total_embedding_dim)) with fields in schema order;
        flat_embeddings concatenates each field's own-dim embedding.

    Example:
        emb = FeatureEmbedding(schema, 16)
        first_order, field_emb, flat_emb = emb({"user_id": ids, ...})
    """

    def __init__(self, schema: DatasetSchema, fm_embed_dim: int, second_order: bool = True) -> None:
        super().__init__()
        if fm_embed_dim < 1:
            raise ValueError(f"expected fm_embed_dim >= 1, got {fm_embed_dim}")
        self.schema = schema
        self.fm_embed_dim = fm_embed_dim
        self.second_order = second_order
        self.num_fields = schema.num_fields
        self.total_embedding_dim = schema.total_embedding_dim
        position = {f.name: i for i, f in enumerate(schema.fields)}

        # Sparse fields, stacked grouped by embedding_dim so each group is a column slice.
        dims = list(dict.fromkeys(f.embedding_dim for f in schema.sparse_fields))
        sparse = [f for d in dims for f in schema.sparse_fields if f.embedding_dim == d]
        self._sparse_names = [f.name for f in sparse]
        self._sparse_slices: list[tuple[int, int]] = []
        start = 0
        for d in dims:
            k = sum(f.embedding_dim == d for f in sparse)
            self._sparse_slices.append((start, start + k))
            start += k
        self.sparse_first_order: nn.Embedding | None = None
        first_offsets: list[int] = []
        if sparse:
            self.sparse_first_order, first_offsets = _shared_table(sparse, 1)
        self.sparse_tables = nn.ModuleList()
        group_offsets: list[int] = []
        if second_order:
            for d, (a, b) in zip(dims, self._sparse_slices, strict=True):
                table, offsets = _shared_table(sparse[a:b], d)
                self.sparse_tables.append(table)
                group_offsets.extend(offsets)
        self.register_buffer("_first_offsets", torch.tensor(first_offsets), persistent=False)
        self.register_buffer("_group_offsets", torch.tensor(group_offsets), persistent=False)
        # With one group both layouts coincide and one index computation serves both.
        self._shared_layout = group_offsets == first_offsets

        # Dense fields: value * vector, grouped by embedding_dim like the sparse ones.
        dense_dims = list(dict.fromkeys(f.embedding_dim for f in schema.dense_fields))
        dense = [f for d in dense_dims for f in schema.dense_fields if f.embedding_dim == d]
        self._dense_names = [f.name for f in dense]
        self._dense_slices: list[tuple[int, int]] = []
        self.dense_first_order: nn.Parameter | None = None
        if dense:
            self.dense_first_order = nn.Parameter(torch.empty(len(dense)))
            _xavier_rows_(self.dense_first_order.view(-1, 1), 1)
        self.dense_vectors = nn.ParameterList()
        start = 0
        for d in dense_dims:
            k = sum(f.embedding_dim == d for f in dense)
            self._dense_slices.append((start, start + k))
            start += k
            if second_order:
                vectors = nn.Parameter(torch.empty(k, d))
                _xavier_rows_(vectors, 1)
                self.dense_vectors.append(vectors)

        # Sequence fields: one EmbeddingBag per field (pooling differs per field).
        sequence = schema.sequence_fields
        self._sequence_names = [f.name for f in sequence]
        self.sequence_first_order = nn.ModuleList()
        self.sequence_tables = nn.ModuleList()
        for f in sequence:
            self.sequence_first_order.append(_bag(f, 1))
            if second_order:
                self.sequence_tables.append(_bag(f, f.embedding_dim))

        self.bias = nn.Parameter(torch.zeros(1))

        # Outputs are built block by block (sparse groups, dense groups, sequence fields);
        # `_concat_fields` lists the fields in that order, `_to_schema_order` permutes back.
        concat = sparse + dense + list(sequence)
        self._concat_dims = [f.embedding_dim for f in concat]
        order = [position[f.name] for f in concat]
        self._needs_permute = order != list(range(len(order)))
        self._concat_to_schema = [order.index(p) for p in range(len(order))]
        self.register_buffer(
            "_to_schema_order", torch.tensor(self._concat_to_schema), persistent=False
        )
        self._uniform_dim = len(set(self._concat_dims)) == 1
        self.projections = nn.ModuleList()
        self._projected: list[bool] = []
        for f in concat:
            projected = second_order and f.embedding_dim != fm_embed_dim
            self._projected.append(projected)
            if projected:
                self.projections.append(nn.Linear(f.embedding_dim, fm_embed_dim))
        self._any_projection = any(self._projected)

        # (name, kind, max_length, what is expected) per field, for validation.
        self._expected = [_expectation(f) for f in schema.fields]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables and dense-field vectors (first and second order): the L2 target."""
        params = [] if self.sparse_first_order is None else [self.sparse_first_order.weight]
        params += [t.weight for t in self.sparse_tables]
        params += [] if self.dense_first_order is None else [self.dense_first_order]
        params += list(self.dense_vectors)
        params += [b.weight for b in self.sequence_first_order]
        params += [b.weight for b in self.sequence_tables]
        return params

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        # Shapes and dtypes only: this runs every batch, so no scans of the values.
        batch_size, first_name = None, ""
        for name, kind, max_length, want in self._expected:
            t = batch.get(name)
            if t is None:
                raise ValueError(
                    f"batch is missing field {name!r}: expected {want}; got keys {sorted(batch)}"
                )
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"field {name!r}: expected {want}, got {type(t).__name__}")
            if kind is FeatureType.DENSE:
                ok_dtype = t.is_floating_point()
            else:
                ok_dtype = t.dtype is torch.int64
            if not ok_dtype:
                raise ValueError(
                    f"field {name!r} ({kind.value}): expected {want}, got dtype {t.dtype}"
                )
            if batch_size is None and t.dim() > 0:
                batch_size, first_name = t.shape[0], name
            ok_shape = (
                t.dim() == 2 and t.shape[1] == max_length
                if kind is FeatureType.SEQUENCE
                else t.dim() == 1
            ) and t.shape[0] == batch_size
            if not ok_shape:
                same_b = (
                    "" if batch_size is None else f" with B = {batch_size} as in {first_name!r}"
                )
                raise ValueError(
                    f"field {name!r} ({kind.value}): expected {want}{same_b}, "
                    f"got shape {tuple(t.shape)}"
                )

    def forward(self, batch: dict[str, torch.Tensor]) -> EmbeddingOutput:
        self._check_batch(batch)
        blocks: list[torch.Tensor] = []  # own-dim embeddings, (B, k, d) each, concat order
        first_order = self.bias

        if self._sparse_names:
            idx = torch.stack([batch[n] for n in self._sparse_names], dim=1)  # (B, S)
            present = idx > 0
            rows = torch.where(present, idx + self._first_offsets, 0)  # (B, S)
            first = self.sparse_first_order(rows)  # (B, S, 1)
            first_order = first_order + first.sum(dim=1)  # (B, 1)
            if self.second_order:
                if not self._shared_layout:
                    rows = torch.where(present, idx + self._group_offsets, 0)
                for table, (a, b) in zip(self.sparse_tables, self._sparse_slices, strict=True):
                    blocks.append(table(rows[:, a:b]))  # (B, k, d)

        if self._dense_names:
            values = torch.stack([batch[n] for n in self._dense_names], dim=1)  # (B, Fd)
            values = values.to(self.dense_first_order.dtype)
            first_order = first_order + (values * self.dense_first_order).sum(1, keepdim=True)
            if self.second_order:
                for vectors, (a, b) in zip(self.dense_vectors, self._dense_slices, strict=True):
                    blocks.append(values[:, a:b, None] * vectors)  # (B, k, d)

        for i, name in enumerate(self._sequence_names):
            x = batch[name]  # (B, L)
            first_order = first_order + self.sequence_first_order[i](x)  # (B, 1)
            if self.second_order:
                blocks.append(self.sequence_tables[i](x).unsqueeze(1))  # (B, 1, d)

        if not self.second_order:
            return EmbeddingOutput(first_order, None, None)
        return EmbeddingOutput(first_order, *self._assemble(blocks))

    def _assemble(self, blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Own-dim blocks (concat order) -> field_embeddings (B, F, D), flat (B, sum d)."""
        if self._uniform_dim:
            own = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)  # (B, F, d)
            if self._needs_permute:
                own = own.index_select(1, self._to_schema_order)
            flat = own.flatten(1)  # (B, F * d)
            if not self._any_projection:
                return own, flat
        else:
            per_field = [e for block in blocks for e in block.unbind(1)]  # F x (B, d_f)
            flat = torch.cat([per_field[i] for i in self._concat_to_schema], dim=1)

        projected: list[torch.Tensor] = []
        it = iter(self.projections)
        j = 0
        for block in blocks:
            k = block.shape[1]
            flags = self._projected[j : j + k]
            if not any(flags):
                projected.append(block)
            else:
                projected.extend(
                    (next(it)(e) if p else e).unsqueeze(1)
                    for e, p in zip(block.unbind(1), flags, strict=True)
                )  # (B, 1, D) each
            j += k
        field_emb = torch.cat(projected, dim=1)  # (B, F, D)
        if self._needs_permute:
            field_emb = field_emb.index_select(1, self._to_schema_order)
        return field_emb, flat
