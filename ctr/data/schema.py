"""Feature schema: what each input column is and how the model embeds it.

The schema travels with every trained model (it is saved beside checkpoints and
logged with each run), so a model loaded on its own knows its fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from enum import Enum


class FeatureType(str, Enum):
    SPARSE = "sparse"  # one categorical index per row: int64 (B,)
    DENSE = "dense"  # one real value per row: float32 (B,)
    SEQUENCE = "sequence"  # padded list of indices per row: int64 (B, max_length), 0 = padding


_COMBINERS = ("mean", "sum", "max")


@dataclass(frozen=True)
class FieldSchema:
    """One input field.

    Args:
        name: column name in a batch dict.
        feature_type: SPARSE, DENSE or SEQUENCE.
        vocabulary_size: number of indices incl. 0 (unknown / padding); 1 for DENSE.
        embedding_dim: size of this field's own embedding.
        group: optional tag (e.g. "user", "item") for feature tables.
        max_length: padded length of a SEQUENCE field.
        combiner: pooling of a SEQUENCE field: "mean", "sum" or "max".
        shares: for a SEQUENCE field, the SPARSE field whose indices it holds (the
            `history` field holds movie_id indices): a model may embed both with one table.

    Example:
        FieldSchema("user_id", FeatureType.SPARSE, 944, 16)
    """

    name: str
    feature_type: FeatureType
    vocabulary_size: int
    embedding_dim: int
    group: str | None = None
    max_length: int | None = None
    combiner: str = "mean"
    shares: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.feature_type, FeatureType):
            object.__setattr__(self, "feature_type", FeatureType(self.feature_type))
        if self.vocabulary_size < 1:
            raise ValueError(
                f"field {self.name!r}: vocabulary_size must be >= 1, got {self.vocabulary_size}"
            )
        if self.embedding_dim < 1:
            raise ValueError(
                f"field {self.name!r}: embedding_dim must be >= 1, got {self.embedding_dim}"
            )
        if self.feature_type is FeatureType.SEQUENCE:
            if self.max_length is None or self.max_length < 1:
                raise ValueError(
                    f"sequence field {self.name!r} needs max_length >= 1, got {self.max_length}"
                )
        if self.shares is not None and self.feature_type is not FeatureType.SEQUENCE:
            raise ValueError(
                f"field {self.name!r}: only a sequence field may share another field's "
                f"indices, got shares={self.shares!r} on a {self.feature_type.value} field"
            )
        if self.combiner not in _COMBINERS:
            raise ValueError(
                f"field {self.name!r}: combiner must be one of {_COMBINERS}, got {self.combiner!r}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["feature_type"] = self.feature_type.value
        if d["shares"] is None:  # saved as schemas were before fields could share indices
            del d["shares"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FieldSchema:
        return cls(**{**d, "feature_type": FeatureType(d["feature_type"])})


class FieldMap(Mapping[str, FieldSchema]):
    """The fields of a schema: an ordered, read-only map name -> FieldSchema.

    Iteration yields the names in field order (the order of the model's
    inputs); `.values()` the FieldSchema objects in that order. Two maps are
    equal when they hold the same fields in the same order; they hash alike
    then too.

    Args:
        fields: a mapping name -> FieldSchema (each key the field's own name),
            or a sequence of FieldSchema.
    """

    def __init__(self, fields: Mapping[str, FieldSchema] | Iterable[FieldSchema]) -> None:
        if isinstance(fields, Mapping):
            for name, f in fields.items():
                if not isinstance(f, FieldSchema) or f.name != name:
                    raise ValueError(
                        f"expected fields[{name!r}] to be a FieldSchema named {name!r}, got {f!r}"
                    )
            items = list(fields.values())
        else:
            if isinstance(fields, (str, bytes)):
                raise ValueError(
                    f"expected a dict name -> FieldSchema or a sequence of FieldSchema, "
                    f"got {fields!r}"
                )
            items = list(fields)
            bad = [f for f in items if not isinstance(f, FieldSchema)]
            if bad:
                raise ValueError(f"expected a sequence of FieldSchema, got {bad[0]!r} in it")
            names = [f.name for f in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate field names in schema: {dupes}")
        self._fields: dict[str, FieldSchema] = {f.name: f for f in items}

    def __getitem__(self, name: str) -> FieldSchema:
        try:
            return self._fields[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields: {list(self._fields)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self.items()) == list(other.items())  # order matters: it is the input order

    def __hash__(self) -> int:
        return hash(tuple(self._fields.values()))

    def __repr__(self) -> str:
        return f"FieldMap({list(self._fields.values())!r})"


@dataclass(frozen=True)
class DatasetSchema:
    """The ordered fields of a data set and the name of its label.

    Args:
        fields: a dict name -> FieldSchema, or a sequence of FieldSchema; kept
            as a read-only `FieldMap` in that order.
        label_field: name of the label column.

    Example:
        DatasetSchema({"u": FieldSchema("u", FeatureType.SPARSE, 100, 8)}, label_field="label")
        DatasetSchema((FieldSchema("u", FeatureType.SPARSE, 100, 8),))  # same schema
    """

    fields: FieldMap
    label_field: str = "label"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", FieldMap(self.fields))
        if not self.fields:
            raise ValueError("a schema needs at least one field")
        for f in self.fields.values():
            if f.shares is None:
                continue
            other = self.fields.get(f.shares)
            if (
                other is None
                or other.feature_type is not FeatureType.SPARSE
                or other.vocabulary_size != f.vocabulary_size
            ):
                raise ValueError(
                    f"field {f.name!r} shares the indices of {f.shares!r}, which must be a "
                    f"sparse field of the schema with the same vocabulary_size "
                    f"({f.vocabulary_size}); got {other!r}"
                )

    def __setstate__(self, state: dict) -> None:
        # Schemas pickled before `fields` became a FieldMap held a tuple and a name index.
        state = {k: v for k, v in state.items() if k != "_by_name"}
        state["fields"] = FieldMap(state["fields"])
        self.__dict__.update(state)

    def __getitem__(self, name: str) -> FieldSchema:
        return self.fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    @property
    def field_names(self) -> list[str]:
        return list(self.fields)

    @property
    def sparse_fields(self) -> list[FieldSchema]:
        return [f for f in self.fields.values() if f.feature_type is FeatureType.SPARSE]

    @property
    def dense_fields(self) -> list[FieldSchema]:
        return [f for f in self.fields.values() if f.feature_type is FeatureType.DENSE]

    @property
    def sequence_fields(self) -> list[FieldSchema]:
        return [f for f in self.fields.values() if f.feature_type is FeatureType.SEQUENCE]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def total_embedding_dim(self) -> int:
        return sum(f.embedding_dim for f in self.fields.values())

    def to_dict(self) -> dict:
        # a list of field dicts in field order, as schemas have always been saved
        return {
            "label_field": self.label_field,
            "fields": [f.to_dict() for f in self.fields.values()],
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSchema:
        """Inverse of `to_dict`; `fields` may also be a dict name -> field dict."""
        fields = d["fields"]
        if isinstance(fields, Mapping):
            parsed = {n: FieldSchema.from_dict({"name": n, **f}) for n, f in fields.items()}
        else:
            parsed = tuple(FieldSchema.from_dict(f) for f in fields)
        return cls(fields=parsed, label_field=d.get("label_field", "label"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DatasetSchema:
        return cls.from_dict(json.loads(text))
