"""Layer tests: shapes, and each fast formula against an explicit loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models.layers import CIN, DNN, FeatureEmbedding, FMInteraction, MultiHeadSelfAttention
from ctr.models.layers.dnn import Dropout

B = 6


def make_schema(genres_length: int = 4) -> DatasetSchema:
    """Fields interleaved by type, with differing embedding dims (fm space: 8)."""
    return DatasetSchema(
        (
            FieldSchema("user_id", FeatureType.SPARSE, 11, 8),
            FieldSchema("genres", FeatureType.SEQUENCE, 7, 8, max_length=genres_length),
            FieldSchema("price", FeatureType.DENSE, 1, 4),
            FieldSchema("movie_id", FeatureType.SPARSE, 13, 4),
            FieldSchema("tags", FeatureType.SEQUENCE, 5, 8, max_length=3, combiner="sum"),
            FieldSchema("gender", FeatureType.SPARSE, 3, 8),
        )
    )


def make_batch(schema: DatasetSchema, batch_size: int = B, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for f in schema.fields.values():
        if f.feature_type is FeatureType.SPARSE:
            batch[f.name] = torch.randint(0, f.vocabulary_size, (batch_size,), generator=g)
        elif f.feature_type is FeatureType.DENSE:
            batch[f.name] = torch.rand(batch_size, generator=g) + 0.1
        else:
            x = torch.randint(1, f.vocabulary_size, (batch_size, f.max_length), generator=g)
            lengths = torch.randint(0, f.max_length + 1, (batch_size, 1), generator=g)
            batch[f.name] = x * (torch.arange(f.max_length) < lengths)  # padded with 0
    return batch


# ---------------------------------------------------------------- FeatureEmbedding


def test_embedding_shapes_and_schema_order():
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    first, field_emb, flat = emb(make_batch(schema))
    assert first.shape == (B, 1)
    assert field_emb.shape == (B, schema.num_fields, 8)
    assert flat.shape == (B, schema.total_embedding_dim)

    # Changing one field changes only that field's row / slice, in schema order.
    batch = make_batch(schema)
    other = dict(batch, movie_id=torch.where(batch["movie_id"] == 1, 2, 1))
    _, field_a, flat_a = emb(batch)
    _, field_b, flat_b = emb(other)
    changed_fields = (field_a != field_b).any(dim=2).any(dim=0)
    assert changed_fields.tolist() == [False, False, False, True, False, False]
    starts = [0]
    for f in schema.fields.values():
        starts.append(starts[-1] + f.embedding_dim)
    changed_cols = (flat_a != flat_b).any(dim=0)
    assert changed_cols[starts[3] : starts[4]].all()
    assert not changed_cols[: starts[3]].any() and not changed_cols[starts[4] :].any()


def reference_embedding(emb: FeatureEmbedding, batch: dict) -> tuple[torch.Tensor, dict]:
    """First order and own-dim embeddings field by field, read from the layer's tables.

    Each table stores a field's embedding E in columns [:d] and its first-order
    weight W in column [d].
    """
    first = emb.bias.expand(B, 1).clone()
    own = {}
    for f in emb.schema.fields.values():
        d, x = (f.embedding_dim if emb.second_order else 0), batch[f.name]
        if f.feature_type is FeatureType.SPARSE:
            i = emb._sparse_names.index(f.name)
            (g,) = [g for g, (a, b) in enumerate(emb._sparse_slices) if a <= i < b]
            table = emb.sparse_tables[g].weight
            rows = table[torch.where(x > 0, x + emb._sparse_offsets[i], 0)]  # (B, d + 1)
        elif f.feature_type is FeatureType.DENSE:
            i = emb._dense_names.index(f.name)
            (g,) = [g for g, (a, b) in enumerate(emb._dense_slices) if a <= i < b]
            rows = x[:, None] * emb.dense_vectors[g][i - emb._dense_slices[g][0]]
        else:
            table = emb.sequence_tables[emb._sequence_names.index(f.name)].weight
            rows = table[x].sum(dim=1)  # the padding row is zero
            if f.combiner == "mean":
                rows = rows / (x > 0).sum(dim=1, keepdim=True).clamp(min=1)
        own[f.name], first = rows[:, :d], first + rows[:, d:]
    return first, own


def test_embedding_values_match_per_field_lookups():
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    with torch.no_grad():
        emb.bias.fill_(0.5)
    batch = make_batch(schema)
    first, field_emb, flat = emb(batch)
    expected_first, own = reference_embedding(emb, batch)
    torch.testing.assert_close(first, expected_first)
    torch.testing.assert_close(
        flat, torch.cat([own[f.name] for f in schema.fields.values()], dim=1)
    )
    # price and movie_id (dim 4) are projected into the fm space (dim 8), in schema order
    assert len(emb.projections) == 2
    torch.testing.assert_close(field_emb[:, 2], emb.projections[0](own["price"]))
    torch.testing.assert_close(field_emb[:, 3], emb.projections[1](own["movie_id"]))
    for i in (0, 1, 4, 5):
        torch.testing.assert_close(field_emb[:, i], own[schema.field_names[i]])


def test_embedding_uniform_dims_in_any_order():
    schema = DatasetSchema(
        (
            FieldSchema("genres", FeatureType.SEQUENCE, 7, 4, max_length=3),
            FieldSchema("price", FeatureType.DENSE, 1, 4),
            FieldSchema("user_id", FeatureType.SPARSE, 11, 4),
        )
    )
    emb = FeatureEmbedding(schema, 4)
    batch = make_batch(schema)
    first, field_emb, flat = emb(batch)
    expected_first, own = reference_embedding(emb, batch)
    torch.testing.assert_close(first, expected_first)
    expected = torch.stack([own[n] for n in schema.field_names], dim=1)
    torch.testing.assert_close(field_emb, expected)
    torch.testing.assert_close(flat, expected.flatten(1))
    assert len(emb.projections) == 0


def test_embedding_padding_is_zero_and_first_order_is_bias():
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    with torch.no_grad():
        emb.bias.fill_(0.25)
    batch = {name: torch.zeros_like(t) for name, t in make_batch(schema).items()}
    first, field_emb, flat = emb(batch)
    torch.testing.assert_close(first, torch.full((B, 1), 0.25))
    assert flat.abs().sum() == 0
    # projected fields carry their projection's bias; the others are exactly zero
    assert field_emb[:, [0, 1, 4, 5]].abs().sum() == 0


def test_padding_rows_initialised_and_kept_zero():
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    for seed in range(3):
        first, field_emb, flat = emb(make_batch(schema, seed=seed))
        (first.sum() + field_emb.square().sum() + flat.sum()).backward()
        opt.step()
        opt.zero_grad()
    for table in [*emb.sparse_tables, *emb.sequence_tables]:
        assert table.weight[0].abs().sum() == 0
        assert table.weight[1:].abs().sum() > 0


def test_sequence_mean_pooling_counts_only_non_padding():
    schema = DatasetSchema((FieldSchema("genres", FeatureType.SEQUENCE, 5, 3, max_length=4),))
    emb = FeatureEmbedding(schema, 3)
    with torch.no_grad():
        emb.bias.zero_()
    x = torch.tensor([[1, 2, 0, 0], [0, 0, 0, 0], [3, 0, 3, 0], [0, 4, 0, 2]])
    first, _, flat = emb({"genres": x})
    w = emb.sequence_tables[0].weight  # (5, 3 + 1): embedding, then first-order weight
    pooled = torch.stack([(w[1] + w[2]) / 2, torch.zeros(4), w[3], (w[4] + w[2]) / 2])
    torch.testing.assert_close(flat, pooled[:, :3])
    torch.testing.assert_close(first, pooled[:, 3:])


@pytest.mark.parametrize("combiner", ["mean", "sum", "max"])
def test_sequence_pooling_ignores_extra_padding_columns(combiner):
    def schema_of(length):
        return DatasetSchema(
            (
                FieldSchema("user_id", FeatureType.SPARSE, 9, 4),
                FieldSchema(
                    "genres", FeatureType.SEQUENCE, 6, 4, max_length=length, combiner=combiner
                ),
            )
        )

    short = FeatureEmbedding(schema_of(3), 4)
    long = FeatureEmbedding(schema_of(7), 4)
    long.load_state_dict(short.state_dict())
    batch = make_batch(schema_of(3))
    padding = torch.zeros(B, 4, dtype=torch.int64)
    padded = dict(batch, genres=torch.cat([batch["genres"], padding], 1))
    for a, b in zip(short(batch), long(padded), strict=True):
        torch.testing.assert_close(a, b)


def test_embedding_parameters_are_the_tables():
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    params = emb.embedding_parameters()
    ids = {id(p) for p in params}
    assert id(emb.bias) not in ids
    assert not any(id(p) in ids for proj in emb.projections for p in proj.parameters())
    # every parameter but the bias and the projections is an embedding table
    others = 1 + sum(1 for proj in emb.projections for _ in proj.parameters())
    assert len(params) == len(list(emb.parameters())) - others
    # sparse tables shared per dim (8, 4); one dense group; one bag per sequence field
    assert len(params) == 2 + 1 + 2
    # second_order=False keeps only the first-order weights
    linear = FeatureEmbedding(schema, 8, second_order=False)
    assert all(p.shape[-1] == 1 for p in linear.embedding_parameters())
    first, field_emb, flat = linear(make_batch(schema))
    assert first.shape == (B, 1) and field_emb is None and flat is None
    assert len(linear.projections) == 0


def test_linear_only_first_order():
    schema = make_schema()
    linear = FeatureEmbedding(schema, 8, second_order=False)
    with torch.no_grad():
        linear.bias.fill_(-0.5)
    batch = make_batch(schema)
    first, _, _ = linear(batch)
    torch.testing.assert_close(first, reference_embedding(linear, batch)[0])


def test_embedding_is_xavier_initialised_per_field():
    schema = DatasetSchema(
        (
            FieldSchema("small", FeatureType.SPARSE, 5, 16),
            FieldSchema("large", FeatureType.SPARSE, 2001, 16),
        )
    )
    emb = FeatureEmbedding(schema, 16)
    w = emb.sparse_tables[0].weight  # rows: padding, small 1-4, large 1-2000
    small, large = w[1:5, :16], w[5:, :16]
    assert small.abs().max() <= math.sqrt(6 / (5 + 16))
    assert large.abs().max() <= math.sqrt(6 / (2001 + 16))
    assert small.abs().max() > math.sqrt(6 / (2001 + 16))  # not one bound for all fields
    assert w[1:5, 16].abs().max() <= math.sqrt(6 / (5 + 1))  # first-order weights, dim 1
    assert w[5:, 16].abs().max() <= math.sqrt(6 / (2001 + 1))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("user_id", None, "missing field 'user_id'"),
        ("user_id", torch.zeros(B, dtype=torch.int32), "field 'user_id'.*int64.*torch.int32"),
        ("user_id", torch.zeros(B, 1, dtype=torch.int64), r"field 'user_id'.*shape \(6, 1\)"),
        (
            "movie_id",
            torch.zeros(B + 1, dtype=torch.int64),
            "field 'movie_id'.*B = 6 as in 'user_id'",
        ),
        ("price", torch.zeros(B, dtype=torch.int64), "field 'price'.*float"),
        ("price", torch.zeros(B, 2), r"field 'price'.*shape \(6, 2\)"),
        ("genres", torch.zeros(B, 4), "field 'genres'.*int64.*torch.float32"),
        ("genres", torch.zeros(B, 5, dtype=torch.int64), r"field 'genres'.*\(B, 4\)"),
        ("genres", torch.zeros(B, dtype=torch.int64), r"field 'genres'.*\(B, 4\).*\(6,\)"),
        ("tags", [0, 1, 2], "field 'tags'.*got list"),
    ],
)
def test_malformed_batch_raises_naming_the_field(field, value, message):
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    batch = make_batch(schema)
    if value is None:
        del batch[field]
    else:
        batch[field] = value
    with pytest.raises(ValueError, match=message):
        emb(batch)


def test_extra_batch_keys_and_float64_dense_are_accepted():
    schema = make_schema()
    emb = FeatureEmbedding(schema, 8)
    batch = make_batch(schema)
    first, _, _ = emb(dict(batch, label=torch.ones(B), price=batch["price"].double()))
    torch.testing.assert_close(first, emb(batch)[0])


# ---------------------------------------------------------------- FMInteraction


def test_fm_matches_pairwise_inner_products():
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    out = FMInteraction()(x)
    assert out.shape == (5, 1)
    expected = torch.zeros(5, dtype=torch.float64)
    for i in range(7):
        for j in range(i + 1, 7):
            expected += (x[:, i] * x[:, j]).sum(dim=1)
    torch.testing.assert_close(out[:, 0], expected)


def test_fm_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, F, D\)"):
        FMInteraction()(torch.randn(5, 7))


# ---------------------------------------------------------------- DNN


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid", "prelu"])
def test_dnn_shapes(activation):
    dnn = DNN(10, [32, 16, 4], activation=activation, dropout=0.5, use_batch_norm=True)
    assert dnn.output_dim == 4
    assert dnn(torch.randn(8, 10)).shape == (8, 4)
    kinds = [type(m).__name__ for m in dnn.layers][:4]
    assert kinds[:2] == ["Linear", "BatchNorm1d"] and kinds[3] == "Dropout"


def test_dnn_without_options_is_linear_activation_only():
    dnn = DNN(10, [32, 16])
    assert [type(m).__name__ for m in dnn.layers] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert all(m.bias is not None for m in dnn.layers if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swish"}, "activation"),
        ({"hidden_units": []}, "non-empty"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_dnn_rejects_bad_arguments(kwargs, message):
    args = {"input_dim": 4, "hidden_units": [8], **kwargs}
    with pytest.raises(ValueError, match=message):
        DNN(**args)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_dropout_mask_statistics(p):
    torch.manual_seed(0)
    n = 400_000
    x = torch.ones(n)
    y = Dropout(p)(x)
    dropped = y == 0
    scale = 1.0 / (1.0 - round(p * 65536) / 65536)
    assert torch.equal(y[~dropped], torch.full_like(y[~dropped], scale))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    # each of the four 16-bit lanes of a 64-bit draw, and neighbours, are unbiased and independent
    lanes = dropped.view(-1, 4).float().mean(dim=0)
    assert (lanes - p).abs().max().item() < 5 * sigma * 2
    both = (dropped[0::2] & dropped[1::2]).float().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (n // 2))
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)  # E[y] = x


def test_dropout_masks_vary_per_call_and_follow_the_seed():
    d = Dropout(0.3)
    x = torch.randn(4, 7, 5)  # 140 elements; any shape, not only multiples of 4
    torch.manual_seed(1)
    a, b = d(x), d(x)
    torch.manual_seed(1)
    assert torch.equal(d(x), a) and not torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert d(x.double()).dtype == torch.float64


def test_dropout_is_identity_in_eval_mode_and_at_zero():
    x = torch.randn(8, 16)
    d = Dropout(0.5).eval()
    assert d(x) is x
    assert Dropout(0.0)(x) is x
    assert Dropout(2**-18)(x) is x  # p rounds to 0 / 2^16
    dnn = DNN(16, [32, 8], dropout=0.5).eval()
    assert torch.equal(dnn(x), dnn(x))


def test_dropout_gradient_is_the_scaled_mask():
    torch.manual_seed(2)
    x = (torch.rand(64, 33) + 0.5).requires_grad_()  # no zeros: y == 0 only where dropped
    y = Dropout(0.25)(x)
    g = torch.randn_like(y)
    y.backward(g)
    kept = (y != 0).float()
    assert 0 < kept.mean() < 1
    torch.testing.assert_close(x.grad, g * kept / (1 - 0.25), rtol=0, atol=1e-6)
    torch.testing.assert_close(y.detach(), x.detach() * kept / (1 - 0.25), rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.0 - 2**-18])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="expected 0 <= p"):
        Dropout(p)


# ---------------------------------------------------------------- CIN


def cin_by_loops(cin: CIN, x0: torch.Tensor) -> torch.Tensor:
    """Eqs. 6-8 of the xDeepFM paper, one feature map and one weight at a time."""
    B, F, D = x0.shape
    hidden = [x0[:, j] for j in range(F)]  # X^0 as F maps of (B, D)
    pooled = []
    for k, conv in enumerate(cin.convs):
        H_prev = len(hidden)
        W = conv.weight[:, :, 0].detach()  # (H_k, H_prev * F): W^{k,h}_{i,j} at [h, i * F + j]
        maps = []
        for h in range(W.shape[0]):
            acc = torch.zeros(B, D, dtype=x0.dtype)
            for i in range(H_prev):
                for j in range(F):
                    acc += W[h, i * F + j] * hidden[i] * x0[:, j]
            maps.append(acc)
        last = k == len(cin.convs) - 1
        if cin.split_half and not last:
            half = len(maps) // 2
            hidden, direct = maps[:half], maps[half:]
        else:
            hidden = direct = maps
        pooled += [m.sum(dim=1) for m in direct]  # sum-pooling over D
    return torch.stack(pooled, dim=1)


@pytest.mark.parametrize(("layer_sizes", "split_half"), [([4, 6, 3], True), ([3, 2], False)])
def test_cin_matches_paper_loops(layer_sizes, split_half):
    torch.manual_seed(0)
    cin = CIN(3, 5, layer_sizes, split_half=split_half).double()
    x0 = torch.randn(2, 3, 5, dtype=torch.float64)
    out = cin(x0)
    expected_dim = (
        sum(h // 2 for h in layer_sizes[:-1]) + layer_sizes[-1] if split_half else sum(layer_sizes)
    )
    assert cin.output_dim == expected_dim
    assert out.shape == (2, expected_dim)
    torch.testing.assert_close(out, cin_by_loops(cin, x0))


def test_cin_rejects_odd_split_sizes_and_bad_input():
    with pytest.raises(ValueError, match="even"):
        CIN(3, 5, [3, 4], split_half=True)
    CIN(3, 5, [3, 4], split_half=False)  # fine without splitting
    with pytest.raises(ValueError, match=r"\(B, 3, 5\)"):
        CIN(3, 5, [4])(torch.randn(2, 4, 5))


# ---------------------------------------------------------------- MultiHeadSelfAttention


def attention_by_loops(layer, x: torch.Tensor) -> torch.Tensor:
    """One AutoInt interacting layer, head by head and field by field."""
    B, F, D = x.shape
    H, d = layer.num_heads, layer.attention_dim
    Wq, Wk, Wv = layer.qkv.weight.detach().split(H * d, dim=0)  # (H * d, D) each
    Wo = layer.out_proj.weight.detach()  # (D, H * d)
    heads = torch.zeros(B, F, H * d, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            rows = slice(h * d, (h + 1) * d)
            q, k, v = x[b] @ Wq[rows].T, x[b] @ Wk[rows].T, x[b] @ Wv[rows].T  # (F, d)
            for i in range(F):
                scores = torch.stack([q[i] @ k[j] for j in range(F)]) / math.sqrt(d)
                alpha = torch.softmax(scores, dim=0)
                heads[b, i, rows] = sum(alpha[j] * v[j] for j in range(F))
    out = torch.zeros(B, F, D, dtype=x.dtype)
    for b in range(B):
        for i in range(F):
            # W_O sums each head's share: concat_h(out^h) W_O = sum_h out^h W_O^h
            for h in range(H):
                cols = slice(h * d, (h + 1) * d)
                out[b, i] += Wo[:, cols] @ heads[b, i, cols]
    if layer.use_residual:
        out = out + x
    return torch.nn.functional.layer_norm(
        torch.relu(out), (D,), layer.norm.weight.detach(), layer.norm.bias.detach()
    )


@pytest.mark.parametrize(
    ("embed_dim", "num_heads", "attention_dim", "use_residual"),
    [(6, 2, 3, True), (4, 2, 3, True), (6, 2, 3, False), (16, 4, 64, True)],
)
def test_attention_matches_loops(embed_dim, num_heads, attention_dim, use_residual):
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(
        embed_dim, num_heads, attention_dim, 2, use_residual=use_residual
    ).double()
    x = torch.randn(3, 5, embed_dim, dtype=torch.float64)
    out = att(x)
    assert att.output_dim == embed_dim
    assert out.shape == (3, 5, embed_dim)  # (B, F, D) -> (B, F, D) whatever H * d is
    expected = x
    for layer in att.layers:
        expected = attention_by_loops(layer, expected)
    torch.testing.assert_close(out, expected)


def test_attention_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(8, 2, 4, 2)
    x = torch.randn(4, 6, 8, requires_grad=True)
    att(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in att.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, F, 8\)"):
        MultiHeadSelfAttention(8, 2, 4, 1)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadSelfAttention(8, 0, 4, 1)


def test_dnn_fast_dropout_is_the_default():
    # the cheaper mask by default; fast_dropout=False gives nn.Dropout's random stream
    plain = DNN(8, [4, 4], dropout=0.2, fast_dropout=False)
    fast = DNN(8, [4, 4], dropout=0.2)
    assert [type(m) for m in plain.layers if "Dropout" in type(m).__name__] == [nn.Dropout] * 2
    assert [type(m) for m in fast.layers if "Dropout" in type(m).__name__] == [Dropout] * 2
