"""Feature schema: what each input column is and how the model embeds it.

The schema travels with every trained model (it is saved beside checkpoints and
logged with each run), so a model loaded on its own knows its fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
        if self.combiner not in _COMBINERS:
            raise ValueError(
                f"field {self.name!r}: combiner must be one of {_COMBINERS}, got {self.combiner!r}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["feature_type"] = self.feature_type.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FieldSchema:
        return cls(**{**d, "feature_type": FeatureType(d["feature_type"])})


@dataclass(frozen=True)
class DatasetSchema:
    """The ordered fields of a data set and the name of its label."""

    fields: tuple[FieldSchema, ...]
    label_field: str = "label"
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names in schema: {dupes}")
        if not self.fields:
            raise ValueError("a schema needs at least one field")
        object.__setattr__(self, "_by_name", {f.name: f for f in self.fields})

    def __getitem__(self, name: str) -> FieldSchema:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields: {list(self._by_name)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def sparse_fields(self) -> list[FieldSchema]:
        return [f for f in self.fields if f.feature_type is FeatureType.SPARSE]

    @property
    def dense_fields(self) -> list[FieldSchema]:
        return [f for f in self.fields if f.feature_type is FeatureType.DENSE]

    @property
    def sequence_fields(self) -> list[FieldSchema]:
        return [f for f in self.fields if f.feature_type is FeatureType.SEQUENCE]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def total_embedding_dim(self) -> int:
        return sum(f.embedding_dim for f in self.fields)

    def to_dict(self) -> dict:
        return {"label_field": self.label_field, "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSchema:
        return cls(
            fields=tuple(FieldSchema.from_dict(f) for f in d["fields"]),
            label_field=d.get("label_field", "label"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DatasetSchema:
        return cls.from_dict(json.loads(text))
