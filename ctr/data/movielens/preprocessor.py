"""The fields of MovieLens and their encoders.

`MovieLensPreprocessor.fit(train_ratings, users, items, max_genres)` fits one
encoder per field on the training rows only (index 0 = unknown / padding);
`encode_frame` then encodes raw rows (ids, optionally side features) the same
way. Fields: user_id, movie_id, gender, age (7 buckets, `age_bucket`),
occupation, zip_prefix (first 3 characters, `zip_prefix`), genres (padded list).

A data set without some user columns (MovieLens-20M has no user file) has
those fields left out: the user columns are those of the `users` table, and
`field_order` is user_id, movie_id, the user fields, genres
(`field_order_for(user_columns)`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ctr.data.transforms import Encoder, LabelEncoder, MultiHotEncoder, encoder_from_dict

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


def field_order_for(user_columns: tuple[str, ...]) -> tuple[str, ...]:
    """The fields of a data set whose user table has `user_columns` (a subset of
    USER_COLUMNS), in FIELD_ORDER's order."""
    fields = {"user_id", "movie_id", "genres", *(SIDE_COLUMNS[c] for c in user_columns)}
    return tuple(f for f in FIELD_ORDER if f in fields)


def _user_columns_of(columns) -> tuple[str, ...]:
    """The user columns (USER_COLUMNS, in that order) among a table's `columns`."""
    return tuple(c for c in USER_COLUMNS if c in set(columns))


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
    """Fitted encoders plus the raw user and item tables of a MovieLens data set.

    It turns raw rows (ids and, optionally, side features) into the encoded
    columns a model takes, the same way the training data was encoded. It is
    JSON-able (`to_dict` / `from_dict`) and travels with trained models.

    Args:
        encoders: field -> fitted encoder, for every field in `field_order`.
        users: user_id and the user columns the data set has, out of age, gender,
            occupation, zip_code (one row per user); they decide `field_order`.
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
        self.user_columns = _user_columns_of(users.columns)
        self.field_order = field_order_for(self.user_columns)
        self.user_fields = tuple(f for f in self.field_order if f not in ITEM_FIELDS)
        missing = [f for f in self.field_order if f not in encoders]
        if missing:
            raise ValueError(f"expected encoders for {list(self.field_order)}, missing {missing}")
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
        user_columns = _user_columns_of(users.columns)
        train_users = train["user_id"].to_numpy()
        train_items = items[items["movie_id"].isin(train["movie_id"].unique())]
        encoders: dict[str, Encoder] = {
            "user_id": LabelEncoder().fit(train_users),
            "movie_id": LabelEncoder().fit(train["movie_id"].to_numpy()),
            # the genre vocabulary of the training rows = that of the distinct training items
            "genres": MultiHotEncoder(max_genres).fit(train_items["genres"].tolist()),
        }
        if user_columns:
            user_index = pd.Index(users["user_id"].to_numpy(np.int64))
            train_users = users.iloc[user_index.get_indexer(train_users)]
        for column in user_columns:
            values = train_users[column]
            if column == "age":
                values = age_bucket(values.to_numpy())
            elif column == "zip_code":
                values = zip_prefix(values)
            encoders[SIDE_COLUMNS[column]] = LabelEncoder().fit(np.asarray(values))
        return cls(encoders, users, items, max_genres)

    # ----------------------------------------------------------------- encoding
    def encode_side(self, column: str, values: Any) -> np.ndarray:
        """Encode one raw side column (see SIDE_COLUMNS) into its field's indices."""
        if column in USER_COLUMNS and column not in self.user_columns:
            raise ValueError(
                f"expected a side column of this data set, one of "
                f"{[*self.user_columns, 'genres']}, got {column!r}"
            )
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
            for column in self.user_columns:
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
        training data encode to 0. User columns the data set does not have
        (MovieLens-20M: all of them) are not fields and are ignored.
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
            if field not in self.field_order:
                continue
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
        return {f: out[f] for f in self.field_order}

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: encoders, field order and the raw side tables (the user
        table's keys are the data set's user columns)."""
        users = {"user_id": self.users["user_id"].astype(int).tolist()}
        for column in self.user_columns:
            values = self.users[column]
            users[column] = (
                values.astype(int).tolist() if column == "age" else [str(v) for v in values]
            )
        return {
            "type": "movielens-100k",
            "version": 1,
            "field_order": list(self.field_order),
            "max_genres": self.max_genres,
            "encoders": {f: self.encoders[f].to_dict() for f in self.field_order},
            "users": users,
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
        if "age" in users.columns:
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
