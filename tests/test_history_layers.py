"""Behaviour-history layers and the models that read a history field.

Each layer is checked on hand-computed cases or against an explicit loop; the
models on a small hand-built schema whose `history` field holds movie_id indices.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import ctr.models.layers.embedding as embedding_module
import ctr.models.layers.history as history_module
from ctr.config import build_config
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.errors import CTRError
from ctr.models import create_model
from ctr.models.layers import (
    HistoryPooling,
    SelfAttentionEncoder,
    TargetAttention,
    distinct_rows,
    masked_mean,
)

B, L = 8, 5
CTR_MODELS = ["attention_deepfm", "deepfm", "fm", "lr", "xdeepfm"]
POOLINGS = ["mean", "din", "self_attention"]


def make_schema(length: int = L, history: bool = True) -> DatasetSchema:
    fields = [
        FieldSchema("user_id", FeatureType.SPARSE, 20, 8),
        FieldSchema("movie_id", FeatureType.SPARSE, 30, 6),
        FieldSchema("gender", FeatureType.SPARSE, 3, 8),
        FieldSchema("genres", FeatureType.SEQUENCE, 9, 8, max_length=4),
    ]
    if history:
        seq = FeatureType.SEQUENCE  # movie_id indices, as the data pipeline's history field
        fields.append(FieldSchema("history", seq, 30, 6, "history", length, shares="movie_id"))
    return DatasetSchema(tuple(fields))


def make_config(*overrides: str):
    small = [
        "fm.embed_dim=8",
        "dnn.hidden_units=[16, 8]",
        "cin.layer_sizes=[6, 4]",
        "attention.num_heads=2",
        "attention.attention_dim=4",
        "history.enabled=true",
        "history.attention_hidden_units=[8, 4]",
        "history.hidden_dim=8",
        "history.num_heads=2",
    ]
    return build_config({}, [*small, *overrides])


def left_padded(lengths: list[int], length: int = L, seed: int = 0) -> torch.Tensor:
    """(len(lengths), length) random item indices in 1..29, row i left-padded to lengths[i]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 30, (len(lengths), length), generator=g)
    n = torch.tensor(lengths)[:, None]
    return x * (torch.arange(length) >= length - n)  # padding (0) at the start


def make_batch(schema: DatasetSchema, seed: int = 0) -> dict[str, torch.Tensor]:
    """B rows; rows 0-1 and 2-3 repeat a history (a positive and its negative), row 4
    has an empty one, so that the dedupe and the all-padding case always run."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "user_id": torch.randint(0, 20, (B,), generator=g),
        "movie_id": torch.randint(0, 30, (B,), generator=g),
        "gender": torch.randint(0, 3, (B,), generator=g),
        "genres": torch.randint(0, 9, (B, 4), generator=g),
    }
    if "history" in schema:
        length = schema["history"].max_length
        history = left_padded([3, 3, length, length, 0, 1, 2, length], length, seed)
        history[1], history[3] = history[0], history[2]
        batch["history"] = history
    return batch


# ---------------------------------------------------------------- layers


def test_masked_mean_leaves_padding_out_and_empty_rows_are_zero():
    x = torch.tensor(
        [[[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]]
    )
    mask = torch.tensor([[False, True, True], [False, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[4.0, 40.0], [0.0, 0.0]]))


def test_distinct_rows_merges_equal_rows_exactly():
    x = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2], [0, 0, 0], [0, 0, 0]])
    rows, inverse = distinct_rows(x)
    assert rows.shape == (3, 3)
    assert torch.equal(rows[inverse], x)
    assert inverse[0] == inverse[2] and inverse[3] == inverse[4] and inverse[0] != inverse[1]
    assert distinct_rows(x[:2]) is None  # every row distinct: nothing to save
    assert distinct_rows(x[:1]) is None


def test_distinct_rows_falls_back_when_hashes_collide(monkeypatch):
    # Every row hashes to 0: the exactness check must refuse to merge distinct rows.
    monkeypatch.setattr(history_module, "_hash_multipliers", lambda n: torch.zeros(n).long())
    x = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2]])
    assert distinct_rows(x) is None


def test_din_weights_on_a_tiny_scorer_by_hand():
    att = TargetAttention(1, [1])
    first, prelu, out = att.first, att.scorer[0], att.scorer[1]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0]]))  # over [h, c, h - c, h * c]
        first.bias.fill_(-7.0)
        prelu.weight.fill_(0.25)
        out.weight.fill_(2.0)
        out.bias.fill_(1.0)
    items = torch.tensor([[[4.0], [2.0], [3.0]]])  # the first item is padding
    mask = torch.tensor([[False, True, True]])
    candidate = torch.tensor([[1.0]])
    # z = h + c + (h - c) + h * c - 7 = 3h - 7 at c = 1: -1 and 2; PReLU: -0.25 and 2;
    # a = 2 * PReLU(z) + 1: 0.5 and 5, raw (no softmax); padding: 0
    torch.testing.assert_close(att.weights(items, mask, candidate), torch.tensor([[0.0, 0.5, 5.0]]))
    torch.testing.assert_close(att(items, mask, candidate), torch.tensor([[0.5 * 2 + 5 * 3.0]]))


def test_din_matches_the_concatenation_formula():
    torch.manual_seed(0)
    att = TargetAttention(4, [8, 3])
    items, candidate = torch.randn(3, 5, 4), torch.randn(3, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]).bool()
    expected = torch.zeros(3, 4)
    for b in range(3):
        for j in range(5):
            if mask[b, j]:
                h, c = items[b, j], candidate[b]
                z = att.first(torch.cat([h, c, h - c, h * c]))  # the paper's input
                a = att.scorer(z.unsqueeze(0)).squeeze()
                expected[b] += a * h
    torch.testing.assert_close(att(items, mask, candidate), expected)


def reference_encoder(enc: SelfAttentionEncoder, items: torch.Tensor, mask: torch.Tensor):
    """The encoder in eval mode, query by query and head by head."""
    n, length, d = items.shape
    x = items * math.sqrt(d) + enc.positions[:length].flip(0)
    x = x * mask[..., None]
    for block in enc.blocks:
        H = block.num_heads
        dh = d // H
        q, k, v = block.qkv(block.norm_attention(x)).split(d, dim=-1)
        heads = torch.zeros(n, length, d)
        for b in range(n):
            for t in range(length):
                keys = [j for j in range(t + 1) if mask[b, j] or j == t]
                for h in range(H):
                    s = slice(h * dh, (h + 1) * dh)
                    scores = torch.stack([q[b, t, s] @ k[b, j, s] for j in keys]) / math.sqrt(dh)
                    weights = torch.softmax(scores, 0)
                    heads[b, t, s] = sum(w * v[b, j, s] for w, j in zip(weights, keys, strict=True))
        x = x + block.out_proj(heads)
        x = (x + block.ffn(block.norm_ffn(x))) * mask[..., None]
    return enc.norm(x) * mask[..., None]


def test_encoder_matches_an_explicit_loop():
    torch.manual_seed(0)
    enc = SelfAttentionEncoder(4, 6, num_layers=2, num_heads=2, dropout=0.3).eval()
    items = torch.randn(3, 5, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]).bool()
    torch.testing.assert_close(enc(items, mask), reference_encoder(enc, items, mask))


def test_encoder_is_causal_and_ignores_padding_contents():
    torch.manual_seed(0)
    enc = SelfAttentionEncoder(4, 5, num_layers=2, num_heads=1, dropout=0.0)
    items = torch.randn(2, 5, 4)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]).bool()
    out = enc(items, mask)
    later = items.clone()
    later[:, 3] = torch.randn(2, 4)  # change position 3: positions 0..2 must not move
    changed = enc(later, mask)
    torch.testing.assert_close(changed[:, :3], out[:, :3])
    assert not torch.allclose(changed[:, 3:], out[:, 3:])
    noisy = items.clone()
    noisy[~mask] = 5.0  # whatever sits at padding never reaches a real position
    torch.testing.assert_close(enc(noisy, mask), out)
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("mode", ["mean", "din", "self_attention", "last"])
def test_all_padding_rows_give_finite_outputs(mode):
    torch.manual_seed(0)
    pool = HistoryPooling(mode, 4, 6, [8], num_layers=2, num_heads=2, dropout=0.2)
    items = torch.randn(2, 6, 4, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]]).bool()
    for training in (True, False):
        pool.train(training)
        out = pool(items, mask, torch.randn(2, 4))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0], torch.zeros(4))  # an empty history pools to zero
        out.sum().backward()
        assert torch.isfinite(items.grad).all()


@pytest.mark.parametrize("mode", ["mean", "din", "self_attention", "last"])
def test_pooling_of_distinct_histories_equals_pooling_every_row(mode):
    torch.manual_seed(0)
    pool = HistoryPooling(mode, 4, 5, [8], num_layers=1, num_heads=1).eval()
    x = left_padded([2, 5, 0, 4])
    histories = torch.cat([x, x[[0, 0, 3, 2]]])  # (8, 5): rows repeated
    distinct, inverse = distinct_rows(histories)
    table = torch.randn(30, 4)
    candidate = torch.randn(8, 4)
    every_row = pool(table[histories], histories > 0, candidate)
    deduped = pool(table[distinct], distinct > 0, candidate, inverse)
    torch.testing.assert_close(deduped, every_row)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("name", [*CTR_MODELS, "sasrec"])
def test_models_train_on_a_history_schema(name, pooling):
    schema = make_schema()
    torch.manual_seed(0)
    model = create_model(name, schema, make_config(f"history.pooling={pooling}")).train()
    logits = model(make_batch(schema))
    assert logits.shape == (B, 1) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, torch.ones(B, 1)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {pname} got no gradient"
    # the history reads movie_id's rows: no table of its own
    tables = [tuple(t.shape) for t in model.embedding.embedding_parameters()]
    if name == "sasrec":
        assert tables == [(30, 8 + 1)]  # one item table of history.hidden_dim, item bias
    else:
        plain = create_model(name, make_schema(history=False), make_config()).embedding
        assert tables == [tuple(t.shape) for t in plain.embedding_parameters()]


@pytest.mark.parametrize("pooling", POOLINGS)
def test_history_pooling_reads_the_movie_id_table(pooling):
    schema = make_schema()
    model = create_model("deepfm", schema, make_config(f"history.pooling={pooling}")).eval()
    batch = make_batch(schema)
    _, fields, _ = model.embedding(batch)
    item = batch["history"][0, -1].item()  # the most recent item of rows 0 and 1
    table = model.embedding.sparse_tables[1]  # the dim-6 group: movie_id alone
    with torch.no_grad():
        i = model.embedding._sparse_names.index("movie_id")
        table.weight[item + model.embedding._sparse_offsets[i]] += 1.0
    _, changed, _ = model.embedding(batch)
    moved = (changed[:, 4] != fields[:, 4]).any(1)  # the history field, in schema order
    assert moved[0] and moved[1] and not moved[4]  # row 4's history is empty


def test_lr_history_is_the_mean_first_order_weight():
    schema = make_schema()
    model = create_model("lr", schema, make_config("history.pooling=din"))
    batch = make_batch(schema)
    without = dict(batch, history=torch.zeros_like(batch["history"]))
    w = model.embedding.sparse_tables[0].weight[:, 0]  # one table: every field's weight
    offset = model.embedding._sparse_offsets[model.embedding._sparse_names.index("movie_id")]
    h = batch["history"]
    expected = torch.where(h > 0, w[h + offset], 0.0).sum(1) / (h > 0).sum(1).clamp(min=1)
    torch.testing.assert_close((model(batch) - model(without)).squeeze(1), expected)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_columns_do_not_change_the_output(pooling):
    """A history [0, 0, a, b] at L = 4 scores as [0, 0, 0, 0, a, b] at L = 6."""
    config = make_config(f"history.pooling={pooling}")
    short = create_model("deepfm", make_schema(4), config).eval()
    long = create_model("deepfm", make_schema(6), config).eval()
    state = short.state_dict()
    key = "embedding.sequence_pooling.history.encoder.positions"
    if pooling == "self_attention":  # rows by recency: the longer table starts alike
        state[key] = torch.cat([state[key], long.state_dict()[key][4:]])
    long.load_state_dict(state)
    batch = make_batch(make_schema(4))
    padded = dict(batch, history=F.pad(batch["history"], (2, 0)))
    torch.testing.assert_close(long(padded), short(batch))


@pytest.mark.parametrize("name", ["deepfm", "sasrec"])
def test_dedupe_gives_the_same_outputs_and_gradients(name, monkeypatch):
    schema = make_schema()
    torch.manual_seed(0)
    model = create_model(name, schema, make_config("history.pooling=self_attention")).eval()
    batch = make_batch(schema)

    def run():
        model.zero_grad()
        logits = model(batch)
        logits.sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    logits, grads = run()
    monkeypatch.setattr(embedding_module, "distinct_rows", lambda x: None)
    plain_logits, plain_grads = run()
    torch.testing.assert_close(logits, plain_logits)
    for a, b in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["xdeepfm", "sasrec"])
def test_chunked_scoring_of_histories_equals_the_whole_batch(name):
    schema = make_schema()
    model = create_model(name, schema, make_config("history.pooling=self_attention")).eval()
    batch = make_batch(schema)
    whole = model(batch).detach()
    model.inference_chunk_rows = 3
    with torch.no_grad():
        torch.testing.assert_close(model(batch), whole)


def test_sasrec_scores_the_last_output_against_the_candidate():
    schema = make_schema()
    model = create_model("sasrec", schema, make_config()).eval()
    batch = make_batch(schema)
    emb = model.embedding
    table = emb.sparse_tables[0].weight  # (30, 8 + 1): item embedding, item bias
    h = batch["history"]
    encoded = emb.sequence_pooling["history"].encoder(table[h][:, :, :-1], h > 0)
    user = encoded[:, -1]  # (B, 8): the most recent position
    candidate = table[batch["movie_id"]]
    mean_bias = table[h][:, :, -1].sum(1) / (h > 0).sum(1).clamp(min=1)
    expected = emb.bias + candidate[:, -1] + mean_bias + (user * candidate[:, :-1]).sum(1)
    torch.testing.assert_close(model(batch).squeeze(1), expected)
    # it reads only history and movie_id, in training and in chunked scoring
    only = {k: batch[k] for k in ("history", "movie_id")}
    torch.testing.assert_close(model(only).squeeze(1), expected)
    model.inference_chunk_rows = 3
    with torch.no_grad():
        torch.testing.assert_close(model(only).squeeze(1), expected)


def test_sasrec_without_history_raises_a_clear_error():
    with pytest.raises(CTRError, match=r"no 'history' field.*history\.enabled=true"):
        create_model("sasrec", make_schema(history=False), make_config())


def test_num_heads_must_divide_the_item_size():
    with pytest.raises(CTRError, match="history.num_heads=4 must divide .* 6"):
        create_model(
            "deepfm",
            make_schema(),
            make_config("history.pooling=self_attention", "history.num_heads=4"),
        )
    create_model("deepfm", make_schema(), make_config("history.pooling=din", "history.num_heads=4"))


@pytest.mark.parametrize("name", ["attention_deepfm", "sasrec"])
def test_pickled_model_with_history_round_trips(name):
    schema = make_schema()
    model = create_model(name, schema, make_config("history.pooling=self_attention")).eval()
    batch = make_batch(schema)
    expected = model(batch)
    clone = pickle.loads(pickle.dumps(model)).eval()
    assert clone.schema == schema and clone.config == model.config
    assert torch.equal(clone(batch), expected)
    fresh = create_model(name, schema, model.config)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(batch), expected)


def test_no_history_schema_builds_no_history_parts():
    model = create_model("deepfm", make_schema(history=False), make_config())
    assert len(model.embedding.sequence_pooling) == 0
    assert not any("sequence_pooling" in k for k in model.state_dict())


def test_embedding_pickled_before_shared_fields_still_loads():
    """A FeatureEmbedding pickled before fields could share a table had neither
    `_shared` nor `sequence_pooling`; it loads and embeds as before."""
    model = create_model("deepfm", make_schema(history=False), make_config()).eval()
    batch = make_batch(model.schema)
    expected = model(batch)
    state = model.embedding.__getstate__()
    state = dict(state, _modules=dict(state["_modules"]))
    del state["_shared"], state["_modules"]["sequence_pooling"]
    old = type(model.embedding).__new__(type(model.embedding))
    old.__setstate__(state)
    model.embedding = old
    torch.testing.assert_close(model(batch), expected)
