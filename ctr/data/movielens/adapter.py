"""MovieLens adapters: the files of each release through the leave-one-out protocol.

LeaveOneOutAdapter does the protocol for any reader of a MovieLensRaw;
MovieLensAdapter ("movielens-100k"), MovieLens1MAdapter ("movielens-1m") and
MovieLens20MAdapter ("movielens-20m") only say which files to read. The fields
are those the data set has: ML-20M has no user file, so its rows are
user_id, movie_id and genres.

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

from pathlib import Path

import numpy as np
import pandas as pd

from ctr.config import DataConfig, FeatureConfig, HistoryConfig
from ctr.data.dataset import EvalSplit
from ctr.data.history import HistoryWindows, strictly_later
from ctr.data.movielens.preprocessor import (
    USER_COLUMNS,
    MovieLensPreprocessor,
    field_order_for,
)
from ctr.data.movielens.protocol import (
    EncodedRatings,
    build_eval_split,
    build_train_set,
    leave_one_out_split,
)
from ctr.data.movielens.raw import DataNotFoundError, MovieLensRaw, read_movielens
from ctr.data.movielens.raw_large import read_ml1m, read_ml20m
from ctr.data.sampling import NegativeSamplingTrainSet
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.errors import CTRError
from ctr.utils.logging import get_logger

# named after the package, not this module: log settings (tests, benchmarks) address it
logger = get_logger("ctr.data.movielens")
_LOGGED_USERS = 20  # topped-up users named in the log; the rest are counted


class LeaveOneOutAdapter:
    """Builds the schema, the training set and the val / test splits of a data set.

    A subclass names the data set (`name`, `default_data_dir`), its user
    columns (`user_columns`, a subset of USER_COLUMNS) and reads its files
    (`read_raw`); everything after reading is shared.

    Args:
        data_dir: directory holding the data set's files.
        data_config: num_negatives, num_eval_negatives, eval_seed.
        feature_config: embedding sizes and max_genres (defaults if None).

    After `build()` the adapter also holds: `schema`, `preprocessor`,
    `ratings` (every rating with its `split`), `item_popularity`,
    `user_ids` / `item_ids` (rows of the user table / the catalogue),
    `train_mask` / `known_mask` ((U, I) bool, bit-packed InteractionMasks; np.asarray
    gives the dense array: training / all interactions)
    and `topped_up_users` (split -> raw ids of users whose candidates repeat).
    """

    name = ""
    default_data_dir = ""
    user_columns: tuple[str, ...] = USER_COLUMNS

    def __init__(
        self,
        data_dir: str | Path,
        data_config: DataConfig,
        feature_config: FeatureConfig | None = None,
        history_config: HistoryConfig | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_config = data_config
        self.feature_config = feature_config if feature_config is not None else FeatureConfig()
        self.history_config = history_config if history_config is not None else HistoryConfig()
        self.field_order = field_order_for(self.user_columns)
        unknown = sorted(set(self.feature_config.field_embedding_dims) - set(self.field_order))
        if unknown:
            raise CTRError(
                f"features.field_embedding_dims names unknown fields {unknown}; "
                f"the fields of {self.name} are: {', '.join(self.field_order)}"
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
        for name in preprocessor.field_order:
            is_genres = name == "genres"
            fields.append(
                FieldSchema(
                    name,
                    FeatureType.SEQUENCE if is_genres else FeatureType.SPARSE,
                    preprocessor.encoders[name].vocabulary_size,
                    dims.get(name, self.feature_config.embedding_dim),
                    group="user" if name in preprocessor.user_fields else "item",
                    max_length=self.feature_config.max_genres if is_genres else None,
                    combiner="mean",
                )
            )
        if self.history_config.enabled:
            movie = next(f for f in fields if f.name == "movie_id")
            fields.append(
                FieldSchema(
                    "history",
                    FeatureType.SEQUENCE,
                    movie.vocabulary_size,
                    movie.embedding_dim,
                    group="history",
                    max_length=self.history_config.length,
                    combiner="mean",
                    shares="movie_id",
                )
            )
        return DatasetSchema(tuple(fields))

    def build(self) -> tuple[DatasetSchema, NegativeSamplingTrainSet, EvalSplit, EvalSplit]:
        """Read, split, encode and sample: (schema, train_ds, val_ds, test_ds)."""
        raw = self._read()
        ratings = leave_one_out_split(raw.ratings)
        split = ratings["split"].to_numpy()
        is_train = split == "train"
        pre = MovieLensPreprocessor.fit(
            ratings[is_train], raw.users, raw.items, self.feature_config.max_genres
        )
        schema = self.build_schema(pre)
        if pre.field_order != self.field_order:
            raise CTRError(
                f"{self.name}: expected the user columns {list(self.user_columns)} in the "
                f"user table, got {list(pre.user_columns)}"
            )
        enc = EncodedRatings.from_preprocessor(pre, ratings, self.field_order)
        enc.later = strictly_later(enc.user_rows, ratings["timestamp"].to_numpy())
        if self.history_config.enabled:
            codes = enc.item_features["movie_id"].numpy()[enc.item_rows]  # (R,) encoded movie ids
            enc.history = HistoryWindows.build(enc.user_rows, codes, self.history_config.length)
        train_ds = build_train_set(enc, is_train, self.data_config.num_negatives)
        self.topped_up_users = {}
        val_ds = self._eval_split("val", enc, split == "val")
        test_ds = self._eval_split("test", enc, split == "test")

        self.schema, self.preprocessor, self.ratings = schema, pre, ratings
        self.user_ids, self.item_ids = pre.user_ids, pre.item_ids
        self.train_mask, self.known_mask = train_ds.train_mask, enc.known_mask
        movie_codes = enc.item_features["movie_id"].numpy()[train_ds.item_rows]  # (N,)
        popularity = np.bincount(movie_codes, minlength=pre.encoders["movie_id"].vocabulary_size)
        popularity[0] = 0
        self.item_popularity = popularity.astype(np.int64)
        return schema, train_ds, val_ds, test_ds

    def read_raw(self) -> MovieLensRaw:
        """The data set's tables (a subclass reads its files here)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to read its data")

    def _read(self) -> MovieLensRaw:
        try:
            return self.read_raw()
        except DataNotFoundError as exc:
            default = Path(self.default_data_dir)
            elsewhere = self.data_dir.parts[-len(default.parts) :] != default.parts
            if not (default.parts and elsewhere and self.data_dir.is_dir()):
                raise
            # the usual slip: data.dataset changed, data.data_dir still another data set's
            raise DataNotFoundError(
                f"{exc} (data.data_dir is {self.data_dir}; {self.name} usually lives in "
                f"{self.default_data_dir}: --override data.data_dir={self.default_data_dir})"
            ) from None

    def _eval_split(self, name: str, enc: EncodedRatings, in_split: np.ndarray) -> EvalSplit:
        """One evaluation split; logs and records the users whose candidates repeat."""
        num_neg = self.data_config.num_eval_negatives
        split, topped_up = build_eval_split(
            name, enc, in_split, num_neg, self.data_config.eval_seed
        )
        if topped_up:
            self.topped_up_users[name] = list(topped_up)
            users, pools = list(topped_up), list(topped_up.values())
            more = ""
            if len(users) > _LOGGED_USERS:  # a small catalogue: say how many, show a few
                more = f" (and {len(users) - _LOGGED_USERS:,} more of {len(users):,} users)"
                users, pools = users[:_LOGGED_USERS], pools[:_LOGGED_USERS]
            logger.warning(
                "%s candidates: users %s have only %s never-interacted items (< %d negatives)%s: "
                "each gets its whole pool, topped up by draws from it with replacement",
                name,
                users,
                pools,
                num_neg,
                more,
            )
        return split


class MovieLensAdapter(LeaveOneOutAdapter):
    """MovieLens-100K: u.data, u.item, u.user, u.genre, u.occupation in `data_dir`."""

    name = "movielens-100k"
    default_data_dir = "data/ml-100k"

    def read_raw(self) -> MovieLensRaw:
        return read_movielens(self.data_dir)


class MovieLens1MAdapter(LeaveOneOutAdapter):
    """MovieLens-1M: ratings.dat, users.dat, movies.dat in `data_dir` (6,040 users,
    3,706 rated movies, 1,000,209 ratings); the fields of MovieLens-100K."""

    name = "movielens-1m"
    default_data_dir = "data/ml-1m"

    def read_raw(self) -> MovieLensRaw:
        return read_ml1m(self.data_dir)


class MovieLens20MAdapter(LeaveOneOutAdapter):
    """MovieLens-20M: ratings.csv, movies.csv in `data_dir` (138,493 users, 26,744
    rated movies, 20,000,263 ratings); no user file, so the fields are user_id,
    movie_id and genres."""

    name = "movielens-20m"
    default_data_dir = "data/ml-20m"
    user_columns = ()

    def read_raw(self) -> MovieLensRaw:
        return read_ml20m(self.data_dir)
