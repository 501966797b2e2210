"""Feature encoders fitted on training rows: categorical, numeric and multi-valued.

Every encoder reserves index 0 for "unknown" (and, for lists, padding), so a
value never seen in training maps to a row of the embedding table that the
model learns as a generic fallback. Encoders serialise to plain JSON-able dicts
(`to_dict` / `from_dict`, or `encoder_from_dict` for any of them) because they
travel with every trained model.

    enc = LabelEncoder().fit(["M", "F", "M"])
    enc.transform(["F", "X"])  # array([1, 0]): classes are 1-based, unseen -> 0
    enc.vocabulary_size        # 3
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd


def _as_1d(values: Any, what: str) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index):
        arr = values.to_numpy()
    else:
        arr = np.asarray(values, dtype=object if isinstance(values, list | tuple) else None)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-d array of values, got shape {arr.shape}")
    return arr


def _json_scalar(value: Any) -> Any:
    """numpy scalars -> Python scalars so the value survives json.dumps."""
    return value.item() if isinstance(value, np.generic) else value


def _check_type(d: dict, expected: str) -> None:
    got = d.get("type")
    if got != expected:
        raise ValueError(f"expected an encoder dict with type {expected!r}, got type {got!r}")


class LabelEncoder:
    """Categorical values -> int64 indices 1..C in sorted class order; unseen -> 0.

    Lookups go through a hash index (pandas), one vectorised call per array.
    """

    def __init__(self) -> None:
        self.classes_: list[Any] | None = None
        self._index: pd.Index | None = None

    def fit(self, values: Iterable[Any]) -> LabelEncoder:
        arr = _as_1d(values, "LabelEncoder.fit")
        uniques = pd.unique(arr[~pd.isna(arr)])
        try:
            uniques = sorted(uniques)
        except TypeError as exc:
            raise ValueError(
                f"LabelEncoder.fit: expected values of one comparable type, got a mix ({exc})"
            ) from None
        self._set_classes([_json_scalar(v) for v in uniques])
        return self

    def _set_classes(self, classes: list[Any]) -> None:
        self.classes_ = list(classes)
        # a typed index (int64, str) hashes ~6x faster than an object one
        self._index = pd.Index(self.classes_) if self.classes_ else pd.Index([], dtype=object)

    def _require_fit(self) -> pd.Index:
        if self._index is None:
            raise ValueError("LabelEncoder is not fitted: call fit(values) first")
        return self._index

    def transform(self, values: Iterable[Any]) -> np.ndarray:
        """(N,) values -> (N,) int64 indices; unseen or missing values -> 0."""
        index = self._require_fit()
        arr = _as_1d(values, "LabelEncoder.transform")
        return (index.get_indexer(arr) + 1).astype(np.int64)

    def fit_transform(self, values: Iterable[Any]) -> np.ndarray:
        return self.fit(values).transform(values)

    def inverse_transform(self, indices: Iterable[int]) -> list[Any]:
        """Indices -> classes; 0 (unknown) -> None."""
        self._require_fit()
        table = [None, *self.classes_]
        return [table[int(i)] for i in np.asarray(indices).ravel()]

    @property
    def vocabulary_size(self) -> int:
        """Number of classes + 1 (index 0 = unknown)."""
        self._require_fit()
        return len(self.classes_) + 1

    def to_dict(self) -> dict[str, Any]:
        self._require_fit()
        return {"type": "label", "classes": list(self.classes_)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelEncoder:
        _check_type(d, "label")
        enc = cls()
        enc._set_classes(d["classes"])
        return enc


class MinMaxScaler:
    """Numbers -> float32 in [0, 1] using the fitted min and max.

    A constant column maps to 0; values outside the fitted range are clipped.
    """

    def __init__(self) -> None:
        self.min_: float | None = None
        self.max_: float | None = None

    def fit(self, values: Iterable[float]) -> MinMaxScaler:
        arr = np.asarray(values, dtype=np.float64).ravel()
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise ValueError("MinMaxScaler.fit: expected at least one finite value, got none")
        self.min_, self.max_ = float(finite.min()), float(finite.max())
        return self

    def transform(self, values: Iterable[float]) -> np.ndarray:
        """(N,) numbers -> (N,) float32 in [0, 1]; NaN -> 0."""
        if self.min_ is None or self.max_ is None:
            raise ValueError("MinMaxScaler is not fitted: call fit(values) first")
        arr = np.asarray(values, dtype=np.float64)
        span = self.max_ - self.min_
        if span <= 0.0:
            return np.zeros(arr.shape, dtype=np.float32)
        scaled = np.clip((arr - self.min_) / span, 0.0, 1.0)
        return np.nan_to_num(scaled, nan=0.0).astype(np.float32)

    def fit_transform(self, values: Iterable[float]) -> np.ndarray:
        return self.fit(values).transform(values)

    @property
    def vocabulary_size(self) -> int:
        return 1

    def to_dict(self) -> dict[str, Any]:
        if self.min_ is None:
            raise ValueError("MinMaxScaler is not fitted: call fit(values) first")
        return {"type": "minmax", "min": self.min_, "max": self.max_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MinMaxScaler:
        _check_type(d, "minmax")
        enc = cls()
        enc.min_, enc.max_ = float(d["min"]), float(d["max"])
        return enc


class MultiHotEncoder:
    """Lists of tokens -> (N, max_length) int64, left-aligned, 0-padded.

    Tokens get indices 1..T in sorted order. Unknown tokens are dropped (they
    would only add padding), lists longer than `max_length` keep their first
    `max_length` known tokens.

    Example:
        enc = MultiHotEncoder(max_length=3).fit([["Drama"], ["Comedy", "Drama"]])
        enc.transform([["Drama", "Comedy"], [], ["Horror"]])
        # [[2, 1, 0], [0, 0, 0], [0, 0, 0]]
    """

    def __init__(self, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"MultiHotEncoder: max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)
        self.tokens_: list[Any] | None = None
        self._index: pd.Index | None = None

    @staticmethod
    def _flatten(
        lists: Sequence[Sequence[Any]] | pd.Series,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """-> (row of each token, token, number of lists); None / NaN = an empty list."""
        seq = lists.tolist() if isinstance(lists, pd.Series) else list(lists)
        seq = [() if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in seq]
        if any(isinstance(v, str | bytes) for v in seq):
            raise ValueError(
                "MultiHotEncoder: expected a list of tokens per row, got a bare string "
                "(wrap it: ['Drama'] instead of 'Drama')"
            )
        lengths = np.fromiter(map(len, seq), dtype=np.int64, count=len(seq))
        flat = np.empty(int(lengths.sum()), dtype=object)
        flat[:] = list(itertools.chain.from_iterable(seq))
        rows = np.repeat(np.arange(len(seq), dtype=np.int64), lengths)
        return rows, flat, len(seq)

    def fit(self, lists: Sequence[Sequence[Any]]) -> MultiHotEncoder:
        _, flat, _ = self._flatten(lists)
        try:
            tokens = sorted(pd.unique(flat))
        except TypeError as exc:
            raise ValueError(
                f"MultiHotEncoder.fit: expected tokens of one comparable type, got a mix ({exc})"
            ) from None
        self._set_tokens([_json_scalar(t) for t in tokens])
        return self

    def _set_tokens(self, tokens: list[Any]) -> None:
        self.tokens_ = list(tokens)
        self._index = pd.Index(self.tokens_) if self.tokens_ else pd.Index([], dtype=object)

    def transform(self, lists: Sequence[Sequence[Any]]) -> np.ndarray:
        """N lists of tokens -> (N, max_length) int64, 0 = padding."""
        if self._index is None:
            raise ValueError("MultiHotEncoder is not fitted: call fit(lists) first")
        rows, flat, n = self._flatten(lists)
        out = np.zeros((n, self.max_length), dtype=np.int64)
        codes = self._index.get_indexer(flat) + 1
        known = codes > 0
        rows, codes = rows[known], codes[known]
        if rows.size:
            # position of each kept token inside its own list: 0, 1, 2, ...
            starts = np.searchsorted(rows, rows, side="left")
            pos = np.arange(rows.size) - starts
            keep = pos < self.max_length
            out[rows[keep], pos[keep]] = codes[keep]
        return out

    def fit_transform(self, lists: Sequence[Sequence[Any]]) -> np.ndarray:
        return self.fit(lists).transform(lists)

    @property
    def vocabulary_size(self) -> int:
        """Number of tokens + 1 (index 0 = padding / unknown)."""
        if self.tokens_ is None:
            raise ValueError("MultiHotEncoder is not fitted: call fit(lists) first")
        return len(self.tokens_) + 1

    def to_dict(self) -> dict[str, Any]:
        if self.tokens_ is None:
            raise ValueError("MultiHotEncoder is not fitted: call fit(lists) first")
        return {"type": "multihot", "max_length": self.max_length, "tokens": list(self.tokens_)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MultiHotEncoder:
        _check_type(d, "multihot")
        enc = cls(int(d["max_length"]))
        enc._set_tokens(d["tokens"])
        return enc


Encoder = LabelEncoder | MinMaxScaler | MultiHotEncoder

_ENCODER_TYPES: dict[str, type] = {
    "label": LabelEncoder,
    "minmax": MinMaxScaler,
    "multihot": MultiHotEncoder,
}


def encoder_from_dict(d: dict[str, Any]) -> Encoder:
    """Rebuild any encoder from its `to_dict()` output (dispatch on d["type"])."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _ENCODER_TYPES:
        raise ValueError(
            f"expected an encoder dict with type in {sorted(_ENCODER_TYPES)}, got {kind!r}"
        )
    return _ENCODER_TYPES[kind].from_dict(d)
