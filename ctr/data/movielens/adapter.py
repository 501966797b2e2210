"""MovieLens-100K: read the raw files, split leave-one-out by time, encode, sample.

Protocol (docs: DESIGN.md, "Data: MovieLens-100K protocol"):

- every rating is an implicit positive;
- per user, ratings sorted by (timestamp, item id): the last is test, the
  second-to-last validation, the rest train;
- fields user_id, movie_id, gender, age (7 buckets), occupation, zip_prefix
  (first 3 characters), genres (padded list, mean-pooled); encoders are fitted
  on training rows only and index 0 means unknown / padding;
- training: 4 negatives per positive, drawn each epoch among the items the
  user has no TRAINING interaction with;
- validation / test: per user the held-out positive + 999 negatives drawn once
  (seed `data.eval_seed`) among the items the user never interacted with.

    adapter = MovieLensAdapter("data/ml-100k", DataConfig())
    schema, train_ds, val_ds, test_ds = adapter.build()
    rows = train_ds.sample_epoch(epoch=1, seed=42)   # 490,570 rows
    val_ds.candidates                                # 943,000 rows

The adapter only reads: it writes nothing, anywhere.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctr.config import DataConfig, FeatureConfig
from ctr.data.dataset import EvalSplit, TabularDataset
from ctr.data.sampling import (
    EVAL_STREAM,
    NegativeSamplingTrainSet,
    sample_eval_candidates,
    seed_entropy,
)
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.data.transforms import Encoder, LabelEncoder, MultiHotEncoder, encoder_from_dict
from ctr.utils.logging import get_logger

logger = get_logger(__name__)

DATA_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation")
ARCHIVE_URL = "https://grouplens.org/datasets/movielens/100k/"

FIELD_ORDER = ("user_id", "movie_id", "gender", "age", "occupation", "zip_prefix", "genres")
USER_FIELDS = ("user_id", "gender", "age", "occupation", "zip_prefix")
ITEM_FIELDS = ("movie_id", "genres")
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_LOWER_BOUNDS = np.array([18, 25, 35, 45, 50, 56])  # first age of buckets 1..6

# raw side columns accepted by MovieLensPreprocessor.encode_frame -> the field they encode to
SIDE_COLUMNS = {
    "gender": "gender",
    "age": "age",
    "occupation": "occupation",
    "zip_code": "zip_prefix",
    "genres": "genres",
}
USER_COLUMNS = ("gender", "age", "occupation", "zip_code")
_SPLIT_CODES = {"val": 1, "test": 2}  # entropy tag of each split's candidate draw


class DataNotFoundError(FileNotFoundError, ValueError):
    """The data directory or one of its files is missing (also a ValueError)."""


def _how_to_get(data_dir: Path) -> str:
    return (
        f"copy {' '.join(DATA_FILES)} from the MovieLens-100K archive ({ARCHIVE_URL}) "
        f"into {data_dir}"
    )


# --------------------------------------------------------------------------- reading


def _read_table(
    path: Path,
    sep: str,
    num_fields: int,
    int_columns: dict[int, str],
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a delimited text file with a checked field count and integer columns.

    Args:
        int_columns: column -> what it holds (for error messages), parsed as int64;
            the other columns stay strings.

    Returns:
        (columns 0..num_fields-1, 1-based line number of each row). Empty lines
        are skipped; any other malformed line raises a ValueError naming the file
        and the line.
    """
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: expected {encoding} text, got undecodable bytes ({exc})"
        ) from None
    kept = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.rstrip("\r")]
    if not kept:
        raise ValueError(f"{path} is empty; {_how_to_get(path.parent)}")
    line_no = np.fromiter((n for n, _ in kept), dtype=np.int64, count=len(kept))
    counts = np.fromiter((line.count(sep) + 1 for _, line in kept), np.int64, len(kept))
    bad = np.flatnonzero(counts != num_fields)
    if bad.size:
        n, line = kept[bad[0]]
        raise ValueError(
            f"{path}, line {n}: expected {num_fields} fields separated by {sep!r}, "
            f"got {counts[bad[0]]}: {line[:120]!r}"
        )
    options = {
        "sep": sep,
        "header": None,
        "names": list(range(num_fields)),
        "quoting": csv.QUOTE_NONE,
        "na_filter": False,
        "skip_blank_lines": True,
    }
    dtypes = {c: (np.int64 if c in int_columns else object) for c in range(num_fields)}
    try:  # the C parser converts the integer columns in one pass ...
        table = pd.read_csv(io.StringIO(text), dtype=dtypes, **options)
    except ValueError:  # ... and on a bad value, find it (and its line) column by column
        table = pd.read_csv(io.StringIO(text), dtype=object, **options)
        for column, what in int_columns.items():
            table[column] = _parse_int(table[column], line_no, path, what)
    assert len(table) == len(line_no), (path, len(table), len(line_no))
    return table, line_no


def _parse_int(column: pd.Series, line_no: np.ndarray, path: Path, what: str) -> np.ndarray:
    values = pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) | (values != np.round(values)))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"{path}, line {line_no[i]}: expected {what} to be an integer, got {column.iloc[i]!r}"
        )
    return values.astype(np.int64)


def _check_allowed(
    values: np.ndarray, allowed: tuple, line_no: np.ndarray, path: Path, what: str
) -> None:
    bad = np.flatnonzero(~np.isin(values, allowed))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"{path}, line {line_no[i]}: expected {what} to be one of {allowed}, got {values[i]!r}"
        )


def _check_unique(ids: np.ndarray, line_no: np.ndarray, path: Path, what: str) -> None:
    dup = np.flatnonzero(pd.Series(ids).duplicated().to_numpy())
    if dup.size:
        i = dup[0]
        raise ValueError(f"{path}, line {line_no[i]}: duplicate {what} {ids[i]}")


@dataclass
class MovieLensRaw:
    """The raw tables, validated.

    ratings: user_id, movie_id, rating, timestamp (file order).
    users: user_id, age, gender, occupation, zip_code (sorted by user_id).
    items: movie_id, title, genres (list of genre names) (sorted by movie_id).
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    genre_names: list[str]
    occupations: list[str]


def read_movielens(data_dir: str | Path) -> MovieLensRaw:
    """Read and validate u.data, u.item, u.user, u.genre and u.occupation."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataNotFoundError(
            f"MovieLens-100K directory not found: {data_dir}; {_how_to_get(data_dir)}"
        )
    missing = [name for name in DATA_FILES if not (data_dir / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"MovieLens-100K file(s) missing: {', '.join(str(data_dir / m) for m in missing)}; "
            f"{_how_to_get(data_dir)}"
        )

    path = data_dir / "u.genre"
    cols, line_no = _read_table(path, "|", 2, {1: "the genre index"}, encoding="latin-1")
    genre_index = cols[1].to_numpy()
    if sorted(genre_index.tolist()) != list(range(len(genre_index))):
        raise ValueError(
            f"{path}: expected genre indices 0..{len(genre_index) - 1}, got {genre_index.tolist()}"
        )
    genre_names = cols[0].to_numpy(dtype=object)[np.argsort(genre_index)].tolist()

    path = data_dir / "u.occupation"
    cols, _ = _read_table(path, "|", 1, {}, encoding="latin-1")
    occupations = [str(v).strip() for v in cols[0]]

    path = data_dir / "u.user"
    cols, line_no = _read_table(path, "|", 5, {0: "the user id", 1: "the age"}, encoding="latin-1")
    user_ids = cols[0].to_numpy()
    _check_unique(user_ids, line_no, path, "user id")
    occupation = cols[3].str.strip().to_numpy(dtype=object)
    _check_allowed(occupation, tuple(occupations), line_no, path, "the occupation")
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age": cols[1].to_numpy(),
            "gender": cols[2].str.strip().to_numpy(dtype=object),
            "occupation": occupation,
            "zip_code": cols[4].str.strip().to_numpy(dtype=object),
        }
    )
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)

    path = data_dir / "u.item"
    num_genres = len(genre_names)
    flag_columns = {5 + g: f"the {name!r} flag" for g, name in enumerate(genre_names)}
    cols, line_no = _read_table(
        path, "|", 5 + num_genres, {0: "the movie id", **flag_columns}, encoding="latin-1"
    )
    movie_ids = cols[0].to_numpy()
    _check_unique(movie_ids, line_no, path, "movie id")
    flags = cols[list(flag_columns)].to_numpy()  # (I, G)
    for g, what in enumerate(flag_columns.values()):
        _check_allowed(flags[:, g], (0, 1), line_no, path, what)
    rows, genre_cols = np.nonzero(flags)
    names = np.asarray(genre_names, dtype=object)
    per_item = np.split(names[genre_cols], np.cumsum(np.bincount(rows, minlength=len(flags)))[:-1])
    items = pd.DataFrame(
        {
            "movie_id": movie_ids,
            "title": cols[1].to_numpy(dtype=object),
            "genres": [g.tolist() for g in per_item],
        }
    )
    items = items.sort_values("movie_id", kind="stable").reset_index(drop=True)

    path = data_dir / "u.data"
    fields = ("user_id", "movie_id", "rating", "timestamp")
    cols, line_no = _read_table(path, "\t", 4, {i: f"the {f}" for i, f in enumerate(fields)})
    ratings = pd.DataFrame({f: cols[i].to_numpy() for i, f in enumerate(fields)})
    for column, table, source in (("user_id", users, "u.user"), ("movie_id", items, "u.item")):
        unknown = np.flatnonzero(~np.isin(ratings[column].to_numpy(), table[column].to_numpy()))
        if unknown.size:
            i = unknown[0]
            raise ValueError(
                f"{path}, line {line_no[i]}: {column} {ratings[column].iloc[i]} is not in {source}"
            )
    return MovieLensRaw(ratings, users, items, genre_names, occupations)


def leave_one_out_split(ratings: pd.DataFrame) -> pd.DataFrame:
    """Sort by (user, timestamp, item) and tag each row "train", "val" or "test".

    Per user the last interaction is test and the second-to-last validation.
    Returns a copy with a `split` column, in that sorted order.
    """
    df = ratings.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    df = df.reset_index(drop=True)
    from_end = df.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    split = np.full(len(df), "train", dtype=object)
    split[from_end == 1] = "val"
    split[from_end == 0] = "test"
    df["split"] = split
    return df


# --------------------------------------------------------------------------- features


def age_bucket(ages: Any) -> np.ndarray:
    """Ages in years -> bucket labels ("<18", "18-24", ..., "56+"); missing -> None."""
    years = pd.to_numeric(pd.Series(ages, dtype=object), errors="coerce").to_numpy(np.float64)
    labels = np.asarray(AGE_BUCKETS, dtype=object)[
        np.searchsorted(_AGE_LOWER_BOUNDS, np.nan_to_num(years, nan=0.0), side="right")
    ]
    labels[np.isnan(years)] = None
    return labels


def zip_prefix(zip_codes: Any) -> np.ndarray:
    """Zip codes -> their first 3 characters; integers are zero-padded to 5 digits first."""
    s = pd.Series(zip_codes)
    if pd.api.types.is_integer_dtype(s):
        s = s.astype(str).str.zfill(5)
    s = s.astype("string").str.strip().str[:3]
    return s.to_numpy(dtype=object, na_value=None)


class MovieLensPreprocessor:
    """Fitted encoders plus the raw user and item tables of MovieLens-100K.

    It turns raw rows (ids and, optionally, side features) into the encoded
    columns a model takes, the same way the training data was encoded. It is
    JSON-able (`to_dict` / `from_dict`) and travels with trained models.

    Args:
        encoders: field -> fitted encoder, for every field in FIELD_ORDER.
        users: user_id, age, gender, occupation, zip_code (one row per user).
        items: movie_id, title, genres (list of names) (one row per movie).
        max_genres: padded length of the genres field.
    """

    def __init__(
        self,
        encoders: dict[str, Encoder],
        users: pd.DataFrame,
        items: pd.DataFrame,
        max_genres: int,
    ) -> None:
        missing = [f for f in FIELD_ORDER if f not in encoders]
        if missing:
            raise ValueError(f"expected encoders for {list(FIELD_ORDER)}, missing {missing}")
        self.encoders = dict(encoders)
        self.users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
        self.items = items.sort_values("movie_id", kind="stable").reset_index(drop=True)
        self.max_genres = int(max_genres)
        self._user_index = pd.Index(self.users["user_id"].to_numpy(np.int64))
        self._item_index = pd.Index(self.items["movie_id"].to_numpy(np.int64))
        self._user_table: dict[str, np.ndarray] | None = None
        self._item_table: dict[str, np.ndarray] | None = None

    @classmethod
    def fit(
        cls, train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, max_genres: int
    ) -> MovieLensPreprocessor:
        """Fit every encoder on the training rows (columns user_id, movie_id) only."""
        user_index = pd.Index(users["user_id"].to_numpy(np.int64))
        rows = user_index.get_indexer(train["user_id"].to_numpy())
        train_users = users.iloc[rows]
        train_items = items[items["movie_id"].isin(train["movie_id"].unique())]
        encoders: dict[str, Encoder] = {
            "user_id": LabelEncoder().fit(train["user_id"].to_numpy()),
            "movie_id": LabelEncoder().fit(train["movie_id"].to_numpy()),
            "gender": LabelEncoder().fit(train_users["gender"].to_numpy()),
            "age": LabelEncoder().fit(age_bucket(train_users["age"].to_numpy())),
            "occupation": LabelEncoder().fit(train_users["occupation"].to_numpy()),
            "zip_prefix": LabelEncoder().fit(zip_prefix(train_users["zip_code"])),
            # the genre vocabulary of the training rows = that of the distinct training items
            "genres": MultiHotEncoder(max_genres).fit(train_items["genres"].tolist()),
        }
        return cls(encoders, users, items, max_genres)

    # ----------------------------------------------------------------- encoding
    def encode_side(self, column: str, values: Any) -> np.ndarray:
        """Encode one raw side column (see SIDE_COLUMNS) into its field's indices."""
        if column == "age":
            return self.encoders["age"].transform(age_bucket(values))
        if column == "zip_code":
            return self.encoders["zip_prefix"].transform(zip_prefix(values))
        if column == "genres":
            return self.encoders["genres"].transform(list(values))
        if column in SIDE_COLUMNS:
            return self.encoders[column].transform(values)
        raise ValueError(f"expected a side column in {list(SIDE_COLUMNS)}, got {column!r}")

    def user_table_features(self) -> dict[str, np.ndarray]:
        """Encoded user-side fields for every user of the table, in user-id order: (U,)."""
        if self._user_table is None:
            self._user_table = {"user_id": self.encoders["user_id"].transform(self.user_ids)}
            for column in USER_COLUMNS:
                values = self.users[column].to_numpy(dtype=object)
                self._user_table[SIDE_COLUMNS[column]] = self.encode_side(column, values)
        return self._user_table

    def catalogue_features(self) -> dict[str, np.ndarray]:
        """Encoded item-side fields for every movie, in movie-id order: (I,) and (I, G)."""
        if self._item_table is None:
            self._item_table = {
                "movie_id": self.encoders["movie_id"].transform(self.item_ids),
                "genres": self.encode_side("genres", self.items["genres"].tolist()),
            }
        return self._item_table

    @property
    def user_ids(self) -> np.ndarray:
        """(U,) raw ids of the user table rows."""
        return self._user_index.to_numpy()

    @property
    def item_ids(self) -> np.ndarray:
        """(I,) raw ids of the catalogue rows."""
        return self._item_index.to_numpy()

    def user_rows(self, user_ids: Any) -> np.ndarray:
        """(N,) row of each user id in the user table; -1 where unknown."""
        return self._user_index.get_indexer(pd.to_numeric(pd.Series(user_ids), errors="coerce"))

    def item_rows(self, movie_ids: Any) -> np.ndarray:
        """(N,) row of each movie id in the catalogue; -1 where unknown."""
        return self._item_index.get_indexer(pd.to_numeric(pd.Series(movie_ids), errors="coerce"))

    def encode_frame(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw rows -> encoded columns {field: (N,) or (N, max_genres) int64}.

        Columns: user_id and movie_id (required); gender, age (years),
        occupation, zip_code (a string: "02139") and genres (list of genre
        names) are optional. Side features not given, or null in a row, are
        looked up by user_id / movie_id; ids unknown to the tables or to the
        training data encode to 0.
        """
        for required in ("user_id", "movie_id"):
            if required not in df.columns:
                raise ValueError(
                    f"expected a column {required!r} in the rows to encode, got columns "
                    f"{list(df.columns)}"
                )
        user_pos = self.user_rows(df["user_id"].to_numpy())
        item_pos = self.item_rows(df["movie_id"].to_numpy())
        out: dict[str, np.ndarray] = {
            "user_id": self.encoders["user_id"].transform(df["user_id"].to_numpy()),
            "movie_id": self.encoders["movie_id"].transform(df["movie_id"].to_numpy()),
        }
        for column, field in SIDE_COLUMNS.items():
            is_user = column in USER_COLUMNS
            table = self.user_table_features() if is_user else self.catalogue_features()
            # the encoded table value of the row's id; unknown id (pos -1) -> the zero row
            encoded = table[field]
            padded = np.concatenate([encoded, np.zeros((1, *encoded.shape[1:]), np.int64)])
            out[field] = padded[user_pos if is_user else item_pos]
            # ... replaced by the encoding of the raw value where the row gives one
            if column in df.columns:
                given = df[column].notna().to_numpy()
                if given.any():
                    out[field][given] = self.encode_side(column, df[column][given].to_numpy())
        return {f: out[f] for f in FIELD_ORDER}

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: encoders, field order and the raw side tables."""
        return {
            "type": "movielens-100k",
            "version": 1,
            "field_order": list(FIELD_ORDER),
            "max_genres": self.max_genres,
            "encoders": {f: self.encoders[f].to_dict() for f in FIELD_ORDER},
            "users": {
                "user_id": self.users["user_id"].astype(int).tolist(),
                "age": self.users["age"].astype(int).tolist(),
                "gender": [str(v) for v in self.users["gender"]],
                "occupation": [str(v) for v in self.users["occupation"]],
                "zip_code": [str(v) for v in self.users["zip_code"]],
            },
            "items": {
                "movie_id": self.items["movie_id"].astype(int).tolist(),
                "title": [str(v) for v in self.items["title"]],
                "genres": [[str(g) for g in gs] for gs in self.items["genres"]],
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MovieLensPreprocessor:
        if d.get("type") != "movielens-100k":
            raise ValueError(
                f"expected a preprocessor dict of type 'movielens-100k', got {d.get('type')!r}"
            )
        users = pd.DataFrame({k: np.asarray(v, dtype=object) for k, v in d["users"].items()})
        users["user_id"] = users["user_id"].astype(np.int64)
        users["age"] = users["age"].astype(np.int64)
        items = pd.DataFrame(
            {
                "movie_id": np.asarray(d["items"]["movie_id"], dtype=np.int64),
                "title": np.asarray(d["items"]["title"], dtype=object),
                "genres": [list(g) for g in d["items"]["genres"]],
            }
        )
        encoders = {f: encoder_from_dict(e) for f, e in d["encoders"].items()}
        return cls(encoders, users, items, d["max_genres"])


# --------------------------------------------------------------------------- adapter


class MovieLensAdapter:
    """Builds the schema, the training set and the val / test splits of MovieLens-100K.

    Args:
        data_dir: directory holding u.data, u.item, u.user, u.genre, u.occupation.
        data_config: num_negatives, num_eval_negatives, eval_seed.
        feature_config: embedding sizes and max_genres (defaults if None).

    After `build()` the adapter also holds: `schema`, `preprocessor`,
    `ratings` (every rating with its `split`), `item_popularity`,
    `user_ids` / `item_ids` (rows of the user table / the catalogue),
    `train_mask` / `known_mask` ((U, I) bool: training / all interactions)
    and `topped_up_users` (split -> raw ids of users whose candidates repeat).
    """

    name = "movielens-100k"

    def __init__(
        self,
        data_dir: str | Path,
        data_config: DataConfig,
        feature_config: FeatureConfig | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_config = data_config
        self.feature_config = feature_config if feature_config is not None else FeatureConfig()
        unknown = sorted(set(self.feature_config.field_embedding_dims) - set(FIELD_ORDER))
        if unknown:
            raise ValueError(
                f"features.field_embedding_dims names unknown fields {unknown}; "
                f"the fields of {self.name} are: {', '.join(FIELD_ORDER)}"
            )
        self.schema: DatasetSchema | None = None
        self.preprocessor: MovieLensPreprocessor | None = None
        self.ratings: pd.DataFrame | None = None
        self.item_popularity: np.ndarray | None = None
        self.user_ids: np.ndarray | None = None
        self.item_ids: np.ndarray | None = None
        self.train_mask: np.ndarray | None = None
        self.known_mask: np.ndarray | None = None
        self.topped_up_users: dict[str, list[int]] = {}

    @property
    def train_interactions(self) -> pd.DataFrame:
        """The training ratings (user_id, movie_id, rating, timestamp), sorted by user and time."""
        return self._split_rows("train")

    def split_interactions(self, split: str) -> pd.DataFrame:
        """The ratings of one split: "train", "val" or "test"."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"expected split 'train', 'val' or 'test', got {split!r}")
        return self._split_rows(split)

    def _split_rows(self, split: str) -> pd.DataFrame:
        if self.ratings is None:
            raise ValueError("the adapter is not built yet: call build() first")
        rows = self.ratings[self.ratings["split"] == split]
        return rows.drop(columns="split").reset_index(drop=True)

    def build_schema(self, preprocessor: MovieLensPreprocessor) -> DatasetSchema:
        dims = self.feature_config.field_embedding_dims
        fields = []
        for name in FIELD_ORDER:
            is_genres = name == "genres"
            fields.append(
                FieldSchema(
                    name,
                    FeatureType.SEQUENCE if is_genres else FeatureType.SPARSE,
                    preprocessor.encoders[name].vocabulary_size,
                    dims.get(name, self.feature_config.embedding_dim),
                    group="user" if name in USER_FIELDS else "item",
                    max_length=self.feature_config.max_genres if is_genres else None,
                    combiner="mean",
                )
            )
        return DatasetSchema(tuple(fields))

    def build(self) -> tuple[DatasetSchema, NegativeSamplingTrainSet, EvalSplit, EvalSplit]:
        """Read, split, encode and sample: (schema, train_ds, val_ds, test_ds)."""
        raw = read_movielens(self.data_dir)
        ratings = leave_one_out_split(raw.ratings)
        split = ratings["split"].to_numpy()
        is_train = split == "train"
        pre = MovieLensPreprocessor.fit(
            ratings[is_train], raw.users, raw.items, self.feature_config.max_genres
        )
        schema = self.build_schema(pre)
        enc = _EncodedRatings.from_preprocessor(pre, ratings)

        positives = TabularDataset(
            enc.gather(enc.user_rows[is_train], enc.item_rows[is_train]),
            np.ones(int(is_train.sum()), np.float32),
        )
        # ratings are sorted by (user, timestamp, item): within a user, row order is time
        by_user = ratings[is_train].groupby("user_id", sort=False)
        recency_rank = by_user.cumcount(ascending=False).to_numpy()  # 0 = user's last
        train_ds = NegativeSamplingTrainSet(
            positives,
            enc.user_rows[is_train],
            enc.item_rows[is_train],
            enc.user_features,
            enc.item_features,
            enc.mask(is_train),
            self.data_config.num_negatives,
            item_ids=pre.item_ids,
            recency_rank=recency_rank,
        )
        self.topped_up_users = {}
        val_ds = self._eval_split("val", enc, split == "val")
        test_ds = self._eval_split("test", enc, split == "test")

        self.schema, self.preprocessor, self.ratings = schema, pre, ratings
        self.user_ids, self.item_ids = pre.user_ids, pre.item_ids
        self.train_mask, self.known_mask = train_ds.train_mask, enc.known_mask
        movie_codes = positives.features["movie_id"].numpy()
        popularity = np.bincount(movie_codes, minlength=pre.encoders["movie_id"].vocabulary_size)
        popularity[0] = 0
        self.item_popularity = popularity.astype(np.int64)
        return schema, train_ds, val_ds, test_ds

    def _eval_split(self, name: str, enc: _EncodedRatings, in_split: np.ndarray) -> EvalSplit:
        """Candidates (positive + sampled negatives) and full-ranking lists of one split."""
        order = np.argsort(enc.user_rows[in_split], kind="stable")
        split_users = enc.user_rows[in_split][order]  # (U,) one held-out rating per user
        positive = enc.item_rows[in_split][order]  # (U,)
        known = enc.known_mask[split_users]  # (U, I)
        num_neg = self.data_config.num_eval_negatives
        rng = np.random.default_rng(
            seed_entropy(self.data_config.eval_seed, _SPLIT_CODES[name], EVAL_STREAM)
        )
        cand, topped_up = sample_eval_candidates(positive, known, num_neg, rng)  # (U, C)
        if topped_up.size:
            ids = enc.user_ids[split_users[topped_up]].tolist()
            pools = (known.shape[1] - known[topped_up].sum(axis=1)).tolist()
            self.topped_up_users[name] = ids
            logger.warning(
                "%s candidates: users %s have only %s never-interacted items (< %d negatives): "
                "each gets its whole pool, topped up by draws from it with replacement",
                name,
                ids,
                pools,
                num_neg,
            )
        num_candidates = 1 + num_neg
        labels = np.zeros(cand.size, dtype=np.float32)
        labels[::num_candidates] = 1.0
        candidates = TabularDataset(
            enc.gather(np.repeat(split_users, num_candidates), cand.reshape(-1)), labels
        )

        # full ranking skips the user's other known interactions (any split)
        num_users, num_items = len(split_users), known.shape[1]
        slot = np.full(enc.known_mask.shape[0], -1, dtype=np.int64)
        slot[split_users] = np.arange(num_users)
        owner = slot[enc.user_rows]  # (R,) block of each rating's user, -1 if not in the split
        keep = (owner >= 0) & ~in_split
        pair_keys = np.unique(owner[keep] * num_items + enc.item_rows[keep])  # sorted (user, item)
        owners, items = np.divmod(pair_keys, num_items)
        other = items != positive[owners]  # a repeated rating of the positive stays rankable
        owners, items = owners[other], items[other]
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(np.bincount(owners, minlength=num_users))

        users_t = torch.from_numpy(split_users)
        return EvalSplit(
            name=name,
            candidates=candidates,
            num_candidates=num_candidates,
            user_ids=enc.user_ids[split_users],
            candidate_items=enc.item_ids[cand],
            user_features={f: enc.user_features[f].index_select(0, users_t) for f in USER_FIELDS},
            item_features=dict(enc.item_features),
            item_ids=enc.item_ids.copy(),
            positive_item_index=positive.astype(np.int64),
            exclude_indptr=indptr,
            exclude_items=items.astype(np.int64),
        )


@dataclass
class _EncodedRatings:
    """Every rating as (user row, catalogue row) plus the encoded feature tables."""

    user_rows: np.ndarray  # (R,) row in the user table
    item_rows: np.ndarray  # (R,) row in the catalogue
    user_ids: np.ndarray  # (U,) raw ids of the user table rows
    item_ids: np.ndarray  # (I,) raw ids of the catalogue rows
    user_features: dict[str, torch.Tensor]  # field -> (U,)
    item_features: dict[str, torch.Tensor]  # field -> (I,) or (I, max_genres)
    known_mask: np.ndarray  # (U, I) bool: rated in any split

    @classmethod
    def from_preprocessor(
        cls, pre: MovieLensPreprocessor, ratings: pd.DataFrame
    ) -> _EncodedRatings:
        user_rows = pre.user_rows(ratings["user_id"].to_numpy())
        item_rows = pre.item_rows(ratings["movie_id"].to_numpy())
        known = np.zeros((len(pre.user_ids), len(pre.item_ids)), dtype=bool)
        known[user_rows, item_rows] = True
        return cls(
            user_rows=user_rows.astype(np.int64),
            item_rows=item_rows.astype(np.int64),
            user_ids=pre.user_ids,
            item_ids=pre.item_ids,
            user_features={k: torch.from_numpy(v) for k, v in pre.user_table_features().items()},
            item_features={k: torch.from_numpy(v) for k, v in pre.catalogue_features().items()},
            known_mask=known,
        )

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """(U, I) bool of the ratings selected by the boolean `rows`."""
        out = np.zeros_like(self.known_mask)
        out[self.user_rows[rows], self.item_rows[rows]] = True
        return out

    def gather(self, user_rows: np.ndarray, item_rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Encoded rows of (user, item) pairs, every field in FIELD_ORDER."""
        users, items = torch.from_numpy(user_rows), torch.from_numpy(item_rows)
        return {
            f: (
                self.user_features[f].index_select(0, users)
                if f in USER_FIELDS
                else self.item_features[f].index_select(0, items)
            )
            for f in FIELD_ORDER
        }
