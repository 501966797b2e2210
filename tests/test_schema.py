"""Feature schema: field validation, derived properties, JSON round-trip."""

from __future__ import annotations

import json

import pytest

from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema


def _schema() -> DatasetSchema:
    return DatasetSchema(
        (
            FieldSchema("u", FeatureType.SPARSE, 100, 8),
            FieldSchema("price", FeatureType.DENSE, 1, 4, group="item"),
            FieldSchema("tags", FeatureType.SEQUENCE, 20, 8, group="item", max_length=5),
            FieldSchema("i", FeatureType.SPARSE, 50, 16, group="item"),
        )
    )


def test_positional_field_schema_and_defaults():
    field = FieldSchema("u", FeatureType.SPARSE, 100, 8)
    assert (field.name, field.feature_type, field.vocabulary_size, field.embedding_dim) == (
        "u",
        FeatureType.SPARSE,
        100,
        8,
    )
    assert field.group is None and field.max_length is None and field.combiner == "mean"
    assert FieldSchema("u", "sparse", 100, 8).feature_type is FeatureType.SPARSE


def test_schema_properties():
    schema = _schema()
    assert schema.field_names == ["u", "price", "tags", "i"]
    assert [f.name for f in schema.sparse_fields] == ["u", "i"]
    assert [f.name for f in schema.dense_fields] == ["price"]
    assert [f.name for f in schema.sequence_fields] == ["tags"]
    assert schema.num_fields == 4
    assert schema.total_embedding_dim == 8 + 4 + 8 + 16
    assert schema["tags"].max_length == 5
    assert "i" in schema and "x" not in schema
    assert schema.label_field == "label"
    with pytest.raises(KeyError, match="'x'.*'u', 'price'"):
        schema["x"]


def test_json_round_trip():
    schema = _schema()
    text = schema.to_json()
    assert json.loads(text)["fields"][0]["feature_type"] == "sparse"
    loaded = DatasetSchema.from_json(text)
    assert loaded == schema
    assert loaded.fields[2].feature_type is FeatureType.SEQUENCE
    assert DatasetSchema.from_dict(schema.to_dict()) == schema


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocabulary_size": 0}, "vocabulary_size must be >= 1, got 0"),
        ({"embedding_dim": 0}, "embedding_dim must be >= 1, got 0"),
        ({"feature_type": FeatureType.SEQUENCE}, "needs max_length >= 1, got None"),
        ({"combiner": "median"}, "combiner must be one of"),
    ],
)
def test_invalid_fields(kwargs, message):
    args = {"name": "f", "feature_type": FeatureType.SPARSE, "vocabulary_size": 10}
    args["embedding_dim"] = 4
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        FieldSchema(**args)


def test_invalid_schemas():
    with pytest.raises(ValueError, match="duplicate field names"):
        DatasetSchema((FieldSchema("a", "sparse", 3, 2), FieldSchema("a", "sparse", 3, 2)))
    with pytest.raises(ValueError, match="at least one field"):
        DatasetSchema(())
