"""Feature schema: field validation, derived properties, JSON round-trip."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import FrozenInstanceError

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
    assert loaded.fields["tags"].feature_type is FeatureType.SEQUENCE
    assert DatasetSchema.from_dict(schema.to_dict()) == schema


def test_schema_saved_before_fields_became_a_mapping_still_loads():
    # schema.json as runs logged it when `fields` was a tuple: a list of field dicts
    saved = {
        "label_field": "label",
        "fields": [
            {"name": "u", "feature_type": "sparse", "vocabulary_size": 100, "embedding_dim": 8,
             "group": None, "max_length": None, "combiner": "mean"},
            {"name": "price", "feature_type": "dense", "vocabulary_size": 1, "embedding_dim": 4,
             "group": "item", "max_length": None, "combiner": "mean"},
            {"name": "tags", "feature_type": "sequence", "vocabulary_size": 20,
             "embedding_dim": 8, "group": "item", "max_length": 5, "combiner": "mean"},
            {"name": "i", "feature_type": "sparse", "vocabulary_size": 50, "embedding_dim": 16,
             "group": "item", "max_length": None, "combiner": "mean"},
        ],
    }  # fmt: skip
    assert DatasetSchema.from_json(json.dumps(saved)) == _schema()
    assert _schema().to_dict() == saved  # and it is still saved that way
    # a dict name -> field dict is read too
    by_name = {f["name"]: {k: v for k, v in f.items() if k != "name"} for f in saved["fields"]}
    assert DatasetSchema.from_dict({"fields": by_name}) == _schema()


def test_fields_is_an_ordered_read_only_mapping():
    schema = _schema()
    assert isinstance(schema.fields, Mapping)
    assert list(schema.fields.keys()) == ["u", "price", "tags", "i"]
    assert [f.name for f in schema.fields.values()] == ["u", "price", "tags", "i"]
    assert list(schema.fields) == schema.field_names
    assert schema.fields["i"] is schema["i"]
    assert len(schema.fields) == 4 and "tags" in schema.fields and "x" not in schema.fields
    with pytest.raises(KeyError, match="'x'.*'u', 'price'"):
        schema.fields["x"]
    with pytest.raises(TypeError):
        schema.fields["x"] = FieldSchema("x", FeatureType.SPARSE, 3, 2)  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        schema.fields = {}  # type: ignore[misc]


def test_dict_and_sequence_of_fields_give_the_same_schema():
    u = FieldSchema("u", FeatureType.SPARSE, 100, 8)
    i = FieldSchema("i", FeatureType.SPARSE, 200, 16)
    from_dict = DatasetSchema(fields={"u": u, "i": i}, label_field="label")
    from_tuple = DatasetSchema((u, i))
    assert from_dict == from_tuple and hash(from_dict) == hash(from_tuple)
    assert from_dict.field_names == ["u", "i"]
    assert {from_dict: 1}[from_tuple] == 1  # hashable, usable as a key
    # field order is the model's input order: a different order is a different schema
    assert DatasetSchema((i, u)) != from_tuple
    assert DatasetSchema((u, i), label_field="clicked") != from_tuple


def test_pickles_round_trip_including_schemas_pickled_with_a_tuple_of_fields():
    schema = _schema()
    assert pickle.loads(pickle.dumps(schema)) == schema
    # the state an older DatasetSchema pickled: fields as a tuple plus a name index
    old = object.__new__(DatasetSchema)
    old.__setstate__(
        {
            "fields": tuple(schema.fields.values()),
            "label_field": "label",
            "_by_name": dict(schema.fields),
        }
    )
    assert old == schema and "_by_name" not in vars(old)
    assert [f.name for f in old.fields.values()] == ["u", "price", "tags", "i"]


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
    a = FieldSchema("a", "sparse", 3, 2)
    with pytest.raises(ValueError, match="duplicate field names"):
        DatasetSchema((a, FieldSchema("a", "sparse", 3, 2)))
    with pytest.raises(ValueError, match="at least one field"):
        DatasetSchema(())
    with pytest.raises(ValueError, match="at least one field"):
        DatasetSchema({})
    with pytest.raises(ValueError, match=r"fields\['b'\] to be a FieldSchema named 'b'"):
        DatasetSchema({"b": a})
    with pytest.raises(ValueError, match="sequence of FieldSchema, got 'a'"):
        DatasetSchema(("a",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'ab'"):
        DatasetSchema("ab")  # type: ignore[arg-type]
