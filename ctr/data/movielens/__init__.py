"""MovieLens: read the raw files, split leave-one-out by time, encode, sample.

textfiles     delimited text files with checked fields and line-numbered errors
raw           reading and validating the MovieLens-100K files (read_movielens)
raw_large     the same for MovieLens-1M (read_ml1m) and MovieLens-20M (read_ml20m)
preprocessor  the fields and their encoders, fitted on training rows (MovieLensPreprocessor)
protocol      the leave-one-out split, the training set and the evaluation splits,
              built from encoded ratings; nothing in it is MovieLens-100K-specific
adapter       the three together: LeaveOneOutAdapter, and one subclass per release
              (registered as "movielens-100k", "movielens-1m", "movielens-20m")

adapter = MovieLensAdapter("data/ml-100k", DataConfig())
schema, train_ds, val_ds, test_ds = adapter.build()
"""

from __future__ import annotations

from ctr.data.movielens.adapter import (
    LeaveOneOutAdapter,
    MovieLens1MAdapter,
    MovieLens20MAdapter,
    MovieLensAdapter,
)
from ctr.data.movielens.preprocessor import (
    AGE_BUCKETS,
    FIELD_ORDER,
    ITEM_FIELDS,
    SIDE_COLUMNS,
    USER_COLUMNS,
    USER_FIELDS,
    MovieLensPreprocessor,
    age_bucket,
    field_order_for,
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
from ctr.data.movielens.raw_large import read_ml1m, read_ml20m

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
    "LeaveOneOutAdapter",
    "MovieLens1MAdapter",
    "MovieLens20MAdapter",
    "MovieLensAdapter",
    "MovieLensPreprocessor",
    "MovieLensRaw",
    "age_bucket",
    "build_eval_split",
    "build_train_set",
    "field_order_for",
    "leave_one_out_split",
    "read_ml1m",
    "read_ml20m",
    "read_movielens",
    "zip_prefix",
]
