"""MovieLens: read the raw files, split leave-one-out by time, encode, sample.

raw           reading and validating the MovieLens-100K files (read_movielens)
preprocessor  the fields and their encoders, fitted on training rows (MovieLensPreprocessor)
protocol      the leave-one-out split, the training set and the evaluation splits,
              built from encoded ratings; nothing in it is MovieLens-100K-specific
adapter       MovieLensAdapter: the three together (registered as "movielens-100k")

adapter = MovieLensAdapter("data/ml-100k", DataConfig())
schema, train_ds, val_ds, test_ds = adapter.build()
"""

from __future__ import annotations

from ctr.data.movielens.adapter import MovieLensAdapter
from ctr.data.movielens.preprocessor import (
    AGE_BUCKETS,
    FIELD_ORDER,
    ITEM_FIELDS,
    SIDE_COLUMNS,
    USER_COLUMNS,
    USER_FIELDS,
    MovieLensPreprocessor,
    age_bucket,
    zip_prefix,
)
from ctr.data.movielens.protocol import (
    EncodedRatings,
    build_eval_split,
    build_train_set,
    leave_one_out_split,
)
from ctr.data.movielens.raw import (
    ARCHIVE_URL,
    DATA_FILES,
    DataNotFoundError,
    MovieLensRaw,
    read_movielens,
)

__all__ = [
    "AGE_BUCKETS",
    "ARCHIVE_URL",
    "DATA_FILES",
    "FIELD_ORDER",
    "ITEM_FIELDS",
    "SIDE_COLUMNS",
    "USER_COLUMNS",
    "USER_FIELDS",
    "DataNotFoundError",
    "EncodedRatings",
    "MovieLensAdapter",
    "MovieLensPreprocessor",
    "MovieLensRaw",
    "age_bucket",
    "build_eval_split",
    "build_train_set",
    "leave_one_out_split",
    "read_movielens",
    "zip_prefix",
]
