"""Encoders: fit/transform, unknown values, padding, scaling and serialisation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctr.data.transforms import LabelEncoder, MinMaxScaler, MultiHotEncoder, encoder_from_dict


def _round_trip(encoder):
    return encoder_from_dict(json.loads(json.dumps(encoder.to_dict())))


# ------------------------------------------------------------------ LabelEncoder


def test_label_encoder_sorted_one_based_and_unseen_to_zero():
    enc = LabelEncoder().fit(["M", "F", "M", None])
    assert enc.classes_ == ["F", "M"]
    assert enc.vocabulary_size == 3
    np.testing.assert_array_equal(enc.transform(["F", "M", "X", None]), [1, 2, 0, 0])
    assert enc.transform(["F"]).dtype == np.int64
    assert enc.inverse_transform([2, 0, 1]) == ["M", None, "F"]


def test_label_encoder_integers_accept_any_numeric_container():
    enc = LabelEncoder().fit(np.array([30, 10, 20, 10]))
    assert enc.classes_ == [10, 20, 30]
    assert all(type(c) is int for c in enc.classes_)  # JSON-able, not numpy scalars
    expected = [1, 3, 0]
    np.testing.assert_array_equal(enc.transform([10, 30, 40]), expected)
    np.testing.assert_array_equal(enc.transform(pd.Series([10, 30, 40])), expected)
    np.testing.assert_array_equal(enc.transform(np.array([10.0, 30.0, 40.0])), expected)
    assert (enc.transform(["10"]) == 0).all()  # a string is not the integer 10


def test_label_encoder_matches_a_dict_lookup_on_a_large_array():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2000, size=200_000)
    enc = LabelEncoder().fit(values[:1000])
    table = {c: i + 1 for i, c in enumerate(enc.classes_)}
    expected = np.array([table.get(v, 0) for v in values.tolist()])
    np.testing.assert_array_equal(enc.transform(values), expected)


def test_label_encoder_round_trip_and_errors():
    enc = LabelEncoder().fit(["b", "a", "c"])
    loaded = _round_trip(enc)
    assert isinstance(loaded, LabelEncoder)
    assert loaded.to_dict() == enc.to_dict() == {"type": "label", "classes": ["a", "b", "c"]}
    np.testing.assert_array_equal(loaded.transform(["c", "z"]), enc.transform(["c", "z"]))
    with pytest.raises(ValueError, match="not fitted"):
        LabelEncoder().transform(["a"])
    with pytest.raises(ValueError, match="one comparable type"):
        LabelEncoder().fit(["a", 1])
    with pytest.raises(ValueError, match="1-d"):
        enc.transform(np.zeros((2, 2)))


# ------------------------------------------------------------------ MinMaxScaler


def test_min_max_scaler_range_clipping_and_constant_column():
    enc = MinMaxScaler().fit([2.0, 4.0, 6.0])
    out = enc.transform([2.0, 3.0, 6.0, 0.0, 10.0, np.nan])
    np.testing.assert_allclose(out, [0.0, 0.25, 1.0, 0.0, 1.0, 0.0])
    assert out.dtype == np.float32
    constant = MinMaxScaler().fit([5.0, 5.0])
    np.testing.assert_array_equal(constant.transform([5.0, 7.0, -1.0]), [0.0, 0.0, 0.0])
    assert enc.vocabulary_size == 1


def test_min_max_scaler_round_trip_and_errors():
    enc = MinMaxScaler().fit([-3.0, 1.5])
    loaded = _round_trip(enc)
    assert isinstance(loaded, MinMaxScaler)
    assert loaded.to_dict() == {"type": "minmax", "min": -3.0, "max": 1.5}
    np.testing.assert_array_equal(loaded.transform([-1.0, 9.0]), enc.transform([-1.0, 9.0]))
    with pytest.raises(ValueError, match="finite"):
        MinMaxScaler().fit([np.nan])
    with pytest.raises(ValueError, match="not fitted"):
        MinMaxScaler().transform([1.0])


# ------------------------------------------------------------------ MultiHotEncoder


def test_multi_hot_padding_unknown_and_truncation():
    enc = MultiHotEncoder(max_length=3).fit([["Drama"], ["Comedy", "Drama"], []])
    assert enc.tokens_ == ["Comedy", "Drama"]
    assert enc.vocabulary_size == 3
    out = enc.transform(
        [
            ["Drama", "Comedy"],
            [],
            ["Horror"],  # unknown only -> all padding
            ["Horror", "Drama"],  # unknown tokens are dropped, known ones left-aligned
            None,  # missing list -> all padding
            ["Drama", "Comedy", "Drama", "Comedy"],  # longer than max_length: first 3
        ]
    )
    assert out.dtype == np.int64
    np.testing.assert_array_equal(
        out,
        [[2, 1, 0], [0, 0, 0], [0, 0, 0], [2, 0, 0], [0, 0, 0], [2, 1, 2]],
    )


def test_multi_hot_matches_a_loop_on_random_lists():
    rng = np.random.default_rng(1)
    vocab = [f"t{i}" for i in range(30)]
    lists = [list(rng.choice(vocab + ["??"], size=rng.integers(0, 8))) for _ in range(2000)]
    enc = MultiHotEncoder(max_length=5).fit(lists[:100])
    table = {t: i + 1 for i, t in enumerate(enc.tokens_)}
    expected = np.zeros((len(lists), 5), dtype=np.int64)
    for r, tokens in enumerate(lists):
        known = [table[t] for t in tokens if t in table][:5]
        expected[r, : len(known)] = known
    np.testing.assert_array_equal(enc.transform(lists), expected)
    np.testing.assert_array_equal(enc.transform(pd.Series(lists)), expected)


def test_multi_hot_round_trip_and_errors():
    enc = MultiHotEncoder(max_length=2).fit([["a", "b"], ["c"]])
    loaded = _round_trip(enc)
    assert isinstance(loaded, MultiHotEncoder)
    assert loaded.to_dict() == {"type": "multihot", "max_length": 2, "tokens": ["a", "b", "c"]}
    np.testing.assert_array_equal(loaded.transform([["c", "a"]]), enc.transform([["c", "a"]]))
    with pytest.raises(ValueError, match="max_length"):
        MultiHotEncoder(max_length=0)
    with pytest.raises(ValueError, match="bare string"):
        enc.transform(["a"])
    with pytest.raises(ValueError, match="not fitted"):
        MultiHotEncoder(2).transform([["a"]])


def test_encoder_from_dict_rejects_unknown_types():
    with pytest.raises(ValueError, match="'label', 'minmax', 'multihot'"):
        encoder_from_dict({"type": "onehot"})
    with pytest.raises(ValueError, match="type 'label'"):
        LabelEncoder.from_dict({"type": "minmax", "min": 0, "max": 1})
