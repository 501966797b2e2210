"""FeatureEmbedding: a batch dict of raw field tensors -> first-order term and embeddings.

Every field gets a second-order embedding e of its own `embedding_dim` and a
first-order (dim 1) weight w:

- sparse:   e = E[x],             w = W[x]              x: int64 (B,)
- sequence: e = pool_j E[x_j],    w = pool_j W[x_j]     x: int64 (B, L), pool = the combiner
            (nn.EmbeddingBag: index 0 is left out of the pool, all padding pools to 0)
- dense:    e = x * v,            w = x * u             x: float (B,)
- history:  e = pool(E[x_j], E[c]), w = mean_j W[x_j]   x: int64 (B, L), a sequence field that
            `shares` the indices of a sparse field c (movie_id): its items are rows
            of c's table, and `pool` (a HistoryPooling: mean, DIN target attention
            with the row's c as the candidate, self-attention then DIN) is given
            to the layer; without one it is the masked mean. w is the masked mean
            of the items' first-order weights whatever the pooling

first_order = b + sum_fields w. Index 0 is padding / unknown and embeds to zeros.
Fields whose `embedding_dim` differs from `fm_embed_dim` are projected into the
shared interaction space by their own `Linear(embedding_dim, fm_embed_dim)`.

Layout, chosen for speed (the layer runs on every batch):

- E and W of a field are stored side by side, as columns [:d] and [d] of one
  (V, d + 1) table, so one lookup (and one backward) serves both.
- Sparse fields of equal `embedding_dim` share one table and are looked up
  together: row 0 is their common padding row and index i > 0 of a field is row
  `offset_field + i`. Indices are not range-checked (that would scan the data on
  every batch): an index >= the field's vocabulary_size reads another field's
  row, or raises IndexError past the end of the table. The data pipeline's
  encoders produce indices in range.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models.layers.history import HistoryPooling, distinct_rows, masked_mean


class EmbeddingOutput(NamedTuple):
    first_order: torch.Tensor  # (B, 1), global bias included
    field_embeddings: torch.Tensor | None  # (B, F, fm_embed_dim); None without second order
    flat_embeddings: torch.Tensor | None  # (B, sum of embedding_dim); None without second order


def _xavier_(weight: torch.Tensor, rows: int, dim: int) -> None:
    """Xavier-uniform init of `weight` (a view) as if it were a (rows, dim) table of its own."""
    bound = math.sqrt(6.0 / (rows + dim))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _init_columns_(weight: torch.Tensor, rows: int, dim: int) -> None:
    """Init a field's rows of a fused table: E in columns [:dim], W in column [dim]."""
    if dim > 0:
        _xavier_(weight[:, :dim], rows, dim)
    _xavier_(weight[:, dim:], rows, 1)


def _shared_table(fields: list[FieldSchema], dim: int) -> tuple[nn.Embedding, list[int]]:
    """One (1 + sum(V_k - 1), dim + 1) table for `fields`, row 0 their common padding.

    Returns the table and, per field, the offset added to its indices > 0.
    """
    offsets, start = [], 1
    for f in fields:
        offsets.append(start - 1)
        start += f.vocabulary_size - 1
    table = nn.Embedding(start, dim + 1, padding_idx=0)
    for f, offset in zip(fields, offsets, strict=True):
        _init_columns_(
            table.weight[offset + 1 : offset + f.vocabulary_size], f.vocabulary_size, dim
        )
    with torch.no_grad():
        table.weight[0].zero_()
    return table, offsets


def _bag(f: FieldSchema, dim: int) -> nn.EmbeddingBag:
    """Pooled (V, dim + 1) table of a sequence field; padding (index 0) is left out of the pool."""
    bag = nn.EmbeddingBag(f.vocabulary_size, dim + 1, mode=f.combiner, padding_idx=0)
    _init_columns_(bag.weight, f.vocabulary_size, dim)
    with torch.no_grad():
        bag.weight[0].zero_()
    return bag


def _expectation(f: FieldSchema) -> tuple[str, FeatureType, int | None, str]:
    if f.feature_type is FeatureType.SEQUENCE:
        return f.name, f.feature_type, f.max_length, f"an int64 tensor of shape (B, {f.max_length})"
    if f.feature_type is FeatureType.SPARSE:
        return f.name, f.feature_type, None, "an int64 tensor of shape (B,)"
    return f.name, f.feature_type, None, "a float tensor of shape (B,)"


def _by_dim(fields: list[FieldSchema], dim_of) -> tuple[list[FieldSchema], list[tuple[int, int]]]:
    """Reorder `fields` so that equal dims are adjacent; return them and each group's slice."""
    dims = list(dict.fromkeys(dim_of(f) for f in fields))
    ordered = [f for d in dims for f in fields if dim_of(f) == d]
    slices, start = [], 0
    for d in dims:
        k = sum(dim_of(f) == d for f in fields)
        slices.append((start, start + k))
        start += k
    return ordered, slices


def _shared_lookup(
    f: FieldSchema,
    sparse: list[FieldSchema],
    slices: list[tuple[int, int]],
    offsets: list[int],
) -> tuple[str, int, int, int]:
    """Where shared field f finds its items: (name, table index, the shared field's
    column within its table's lookup group, the offset added to indices > 0)."""
    i = [s.name for s in sparse].index(f.shares)
    (g,) = [g for g, (a, b) in enumerate(slices) if a <= i < b]
    if f.embedding_dim != sparse[i].embedding_dim:
        raise ValueError(
            f"field {f.name!r} shares the table of {f.shares!r}, so it needs its "
            f"embedding_dim ({sparse[i].embedding_dim}), got {f.embedding_dim}"
        )
    return f.name, g, i - slices[g][0], offsets[i]


class FeatureEmbedding(nn.Module):
    """Embeds every field of `schema`; see the module docstring for the formulas.

    Args:
        schema: the fields, in the order of the outputs.
        fm_embed_dim: D, the size of the shared interaction space.
        second_order: build the second-order embeddings (False for a purely linear
            model: `field_embeddings` and `flat_embeddings` are then None).
        sequence_pooling: for sequence fields that share another field's indices
            (the history), field name -> the HistoryPooling of its items; a shared
            field not named here is mean-pooled. Such a field's `combiner` is not read.

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

    def __init__(
        self,
        schema: DatasetSchema,
        fm_embed_dim: int,
        second_order: bool = True,
        sequence_pooling: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if fm_embed_dim < 1:
            raise ValueError(f"expected fm_embed_dim >= 1, got {fm_embed_dim}")
        self.schema = schema
        self.fm_embed_dim = fm_embed_dim
        self.second_order = second_order
        self.num_fields = schema.num_fields
        self.total_embedding_dim = schema.total_embedding_dim

        def own_dim(f: FieldSchema) -> int:  # columns before the first-order column
            return f.embedding_dim if second_order else 0

        # Sparse fields: stacked into (B, S) with each dim group a column slice.
        sparse, self._sparse_slices = _by_dim(schema.sparse_fields, own_dim)
        self._sparse_names = [f.name for f in sparse]
        self.sparse_tables = nn.ModuleList()
        offsets: list[int] = []
        for a, b in self._sparse_slices:
            table, group_offsets = _shared_table(sparse[a:b], own_dim(sparse[a]))
            self.sparse_tables.append(table)
            offsets += group_offsets
        self.register_buffer(
            "_sparse_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False
        )

        # Dense fields: value * (v, u), one (k, d + 1) parameter per dim group.
        dense, self._dense_slices = _by_dim(schema.dense_fields, own_dim)
        self._dense_names = [f.name for f in dense]
        self.dense_vectors = nn.ParameterList()
        for a, b in self._dense_slices:
            vectors = nn.Parameter(torch.empty(b - a, own_dim(dense[a]) + 1))
            _init_columns_(vectors, 1, own_dim(dense[a]))
            self.dense_vectors.append(vectors)

        # Sequence fields: one EmbeddingBag each (the pooling differs per field).
        sequence = [f for f in schema.sequence_fields if f.shares is None]
        self._sequence_names = [f.name for f in sequence]
        self.sequence_tables = nn.ModuleList(_bag(f, own_dim(f)) for f in sequence)

        # Shared sequence fields (the history): rows of their sparse field's table.
        shared = [f for f in schema.sequence_fields if f.shares is not None]
        self._shared = [_shared_lookup(f, sparse, self._sparse_slices, offsets) for f in shared]
        pooling = dict(sequence_pooling or {})
        unknown = sorted(set(pooling) - {f.name for f in shared})
        if unknown:
            raise ValueError(
                f"sequence_pooling names {unknown}, which are not sequence fields sharing "
                f"another field's indices; such fields: {[f.name for f in shared]}"
            )
        for f in shared:
            if pooling.get(f.name) is None:
                pooling[f.name] = HistoryPooling("mean", f.embedding_dim, f.max_length)
        self.sequence_pooling = nn.ModuleDict(
            (f.name, pooling[f.name]) for f in shared if second_order
        )

        self.bias = nn.Parameter(torch.zeros(1))

        # The per-group outputs come in "concat order" (sparse, dense, sequence, shared);
        # `_to_schema_order` permutes them back.
        concat = sparse + dense + sequence + shared
        order = [schema.field_names.index(f.name) for f in concat]
        self._needs_permute = order != list(range(len(order)))
        self._concat_to_schema = [order.index(p) for p in range(len(order))]
        self.register_buffer(
            "_to_schema_order",
            torch.tensor(self._concat_to_schema, dtype=torch.int64),
            persistent=False,
        )
        self._uniform_width = len({own_dim(f) for f in concat}) == 1

        # Projections into the fm space, for the fields (in schema order) whose dim differs.
        fields = list(schema.fields.values())
        self._projected = [second_order and f.embedding_dim != fm_embed_dim for f in fields]
        self.projections = nn.ModuleList(
            nn.Linear(f.embedding_dim, fm_embed_dim)
            for f, p in zip(fields, self._projected, strict=True)
            if p
        )

        self._expected = [_expectation(f) for f in fields]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables and dense-field vectors (first and second order): the L2 target."""
        return (
            [t.weight for t in self.sparse_tables]
            + list(self.dense_vectors)
            + [b.weight for b in self.sequence_tables]
        )

    def validate_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Raise ValueError naming the field if a schema field is missing or malformed.

        Shapes and dtypes only: this runs on every batch, so the values are not scanned.
        """
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

    def _pool_shared(
        self,
        batch: dict[str, torch.Tensor],
        groups: list[torch.Tensor],
        name: str,
        table_index: int,
        column: int,
        offset: int,
    ) -> torch.Tensor:
        """Shared sequence field `name` (B, L) -> its (B, 1, d + 1) group: [pooled e, w].

        `groups` holds the sparse lookups so far; the candidate is the row's entry of
        the shared field there (see _shared_lookup).

        The lookup, the first-order mean and the pooling's candidate-free part run
        once per distinct history of the batch (rows of a user repeat it).
        """
        x = batch[name]  # (B, L)
        distinct = distinct_rows(x)
        histories, inverse = distinct if distinct is not None else (x, None)  # (U, L), (B,)
        mask = histories > 0  # (U, L)
        rows = torch.where(mask, histories + offset, 0)  # (U, L)
        items = self.sparse_tables[table_index](rows)  # (U, L, d + 1)
        w = masked_mean(items[:, :, -1:], mask)  # (U, 1)
        if inverse is not None:
            w = w.index_select(0, inverse)  # (B, 1)
        if not self.second_order:
            return w.unsqueeze(1)  # (B, 1, 1)
        candidate = groups[table_index][:, column, :-1]  # (B, d): the row's own item
        e = self.sequence_pooling[name](items[:, :, :-1], mask, candidate, inverse)  # (B, d)
        return torch.cat([e, w], dim=1).unsqueeze(1)  # (B, 1, d + 1)

    def __setstate__(self, state: dict) -> None:
        # Embeddings pickled before sequence fields could share a sparse field's table.
        state.setdefault("_shared", [])
        super().__setstate__(state)
        if "sequence_pooling" not in self._modules:
            self.sequence_pooling = nn.ModuleDict()

    def forward(self, batch: dict[str, torch.Tensor]) -> EmbeddingOutput:
        self.validate_batch(batch)
        groups: list[torch.Tensor] = []  # (B, k, d + 1) each, in concat order

        if self._sparse_names:
            idx = torch.stack([batch[n] for n in self._sparse_names], dim=1)  # (B, S)
            rows = torch.where(idx > 0, idx + self._sparse_offsets, 0)  # (B, S)
            if len(self.sparse_tables) == 1:
                groups.append(self.sparse_tables[0](rows))  # (B, S, d + 1)
            else:
                for table, (a, b) in zip(self.sparse_tables, self._sparse_slices, strict=True):
                    groups.append(table(rows[:, a:b]))  # (B, k, d + 1)

        if self._dense_names:
            values = torch.stack([batch[n] for n in self._dense_names], dim=1)  # (B, Fd)
            values = values.to(self.dense_vectors[0].dtype)
            for vectors, (a, b) in zip(self.dense_vectors, self._dense_slices, strict=True):
                groups.append(values[:, a:b, None] * vectors)  # (B, k, d + 1)

        for name, bag in zip(self._sequence_names, self.sequence_tables, strict=True):
            groups.append(bag(batch[name]).unsqueeze(1))  # (B, 1, d + 1)

        for lookup in self._shared:
            groups.append(self._pool_shared(batch, groups, *lookup))  # (B, 1, d + 1)

        if self._uniform_width:
            full = groups[0] if len(groups) == 1 else torch.cat(groups, dim=1)  # (B, F, d + 1)
            if self._needs_permute:
                full = full.index_select(1, self._to_schema_order)
            first_order = self.bias + full[:, :, -1].sum(dim=1, keepdim=True)  # (B, 1)
            if not self.second_order:
                return EmbeddingOutput(first_order, None, None)
            own = full[:, :, :-1]  # (B, F, d)
            flat = own.reshape(own.shape[0], -1)  # (B, F * d)
            if not self.projections:
                return EmbeddingOutput(first_order, own, flat)
            per_field = list(own.unbind(1))  # F x (B, d)
        else:
            first_order = self.bias + sum(g[:, :, -1].sum(dim=1, keepdim=True) for g in groups)
            concat = [e for g in groups for e in g[:, :, :-1].unbind(1)]  # F x (B, d_f)
            per_field = [concat[i] for i in self._concat_to_schema]
            flat = torch.cat(per_field, dim=1)  # (B, sum d_f)

        it = iter(self.projections)
        field_emb = torch.stack(
            [next(it)(e) if p else e for e, p in zip(per_field, self._projected, strict=True)],
            dim=1,
        )  # (B, F, D)
        return EmbeddingOutput(first_order, field_emb, flat)
