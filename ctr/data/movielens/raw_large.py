"""Readers of the larger MovieLens releases: MovieLens-1M and MovieLens-20M.

    raw = read_ml1m("data/ml-1m")     # ratings.dat, users.dat, movies.dat ('::', latin-1)
    raw = read_ml20m("data/ml-20m")   # ratings.csv, movies.csv (UTF-8, header line)

Both return a MovieLensRaw (raw.py) with the columns of MovieLens-100K, so the
same protocol and preprocessor apply:

- ML-1M users have gender, age (already a bucket code: 1 = under 18, 18 =
  18-24, 25, 35, 45, 50, 56 = 56+, which `age_bucket` maps to the same labels as
  an age in years), occupation (a code 0..20, turned into the README's names)
  and zip code;
- ML-20M has no user file: `users` holds only the user ids of the ratings, and
  its ratings are half stars (float).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctr.data.movielens.raw import MovieLensRaw, items_table, require_files
from ctr.data.movielens.textfiles import (
    check_allowed,
    check_known,
    check_unique,
    read_table,
    split_genres,
)
from ctr.errors import CTRError

GROUPLENS_FILES = "https://files.grouplens.org/datasets/movielens"
ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
ML20M_FILES = ("ratings.csv", "movies.csv")
# users.dat's occupation codes, as the ML-1M README lists them
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
ML20M_NO_GENRES = "(no genres listed)"


def how_to_get(archive: str, files: tuple[str, ...], data_dir: Path) -> str:
    """The fix for missing files: the download command, or where to put them by hand."""
    name = {"ml-1m": "movielens-1m", "ml-20m": "movielens-20m"}.get(archive, archive)
    return (
        f"run `ctr data download {name} --data-dir {data_dir}`, or download "
        f"{GROUPLENS_FILES}/{archive}.zip yourself and put {', '.join(files)} from it "
        f"into {data_dir}"
    )


def read_ml1m(data_dir: str | Path) -> MovieLensRaw:
    """Read and validate MovieLens-1M: ratings.dat, users.dat and movies.dat."""
    data_dir = Path(data_dir)
    how = how_to_get("ml-1m", ML1M_FILES, data_dir)
    require_files(data_dir, ML1M_FILES, "MovieLens-1M", how)

    path = data_dir / "users.dat"
    ints = {0: "the user id", 2: "the age code", 3: "the occupation code"}
    cols, line_no = read_table(path, "::", 5, ints, encoding="latin-1", how_to_get=how)
    user_ids = cols[0].to_numpy()
    check_unique(user_ids, line_no, path, "user id")
    gender = cols[1].str.strip().to_numpy(dtype=object)
    check_allowed(gender, ("F", "M"), line_no, path, "the gender")
    check_allowed(cols[2].to_numpy(), ML1M_AGE_CODES, line_no, path, "the age code")
    codes = cols[3].to_numpy()
    check_allowed(codes, tuple(range(len(ML1M_OCCUPATIONS))), line_no, path, "the occupation")
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age": cols[2].to_numpy(),
            "gender": gender,
            "occupation": np.asarray(ML1M_OCCUPATIONS, dtype=object)[codes],
            "zip_code": cols[4].str.strip().to_numpy(dtype=object),
        }
    )
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)

    path = data_dir / "movies.dat"
    cols, line_no = read_table(
        path, "::", 3, {0: "the movie id"}, encoding="latin-1", how_to_get=how
    )
    movie_ids = cols[0].to_numpy()
    check_unique(movie_ids, line_no, path, "movie id")
    genres = split_genres(cols[2].str.strip())
    items = items_table(movie_ids, cols[1].to_numpy(dtype=object), genres)

    path = data_dir / "ratings.dat"
    fields = ("user_id", "movie_id", "rating", "timestamp")
    ints = {i: f"the {f}" for i, f in enumerate(fields)}
    cols, line_no = read_table(path, "::", 4, ints, encoding="latin-1", how_to_get=how)
    ratings = pd.DataFrame({f: cols[i].to_numpy() for i, f in enumerate(fields)})
    known = {"user_id": (users["user_id"].to_numpy(), "users.dat")}
    known["movie_id"] = (items["movie_id"].to_numpy(), "movies.dat")
    check_known(ratings, known, line_no, path)
    genre_names = sorted({g for gs in items["genres"] for g in gs})
    return MovieLensRaw(ratings, users, items, genre_names, list(ML1M_OCCUPATIONS))


def _read_csv(path: Path, columns: dict[str, type], how: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A CSV file with a header line naming exactly `columns` (name -> int / float / str).

    Returns (the table, 1-based line number of each row). pandas' C parser
    reads it in one pass; a bad value is then found column by column and
    reported with its line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise CTRError(f"{path}: expected UTF-8 text, got undecodable bytes ({exc})") from None
    if not header:
        raise CTRError(f"{path} is empty; {how}")
    if header.split(",") != list(columns):
        raise CTRError(f"{path}, line 1: expected the header {','.join(columns)!r}, got {header!r}")
    numpy_types = {int: np.int64, float: np.float64, str: object}
    dtypes = {name: numpy_types[kind] for name, kind in columns.items()}
    options = {"encoding": "utf-8", "keep_default_na": False, "skip_blank_lines": False}
    try:
        table = pd.read_csv(path, dtype=dtypes, **options)
    except pd.errors.ParserError as exc:  # a line with another field count, a stray quote
        raise CTRError(f"{path}: {exc}".strip()) from None
    except (ValueError, UnicodeDecodeError):  # a bad value: find it and its line
        table = pd.read_csv(path, dtype=object, **options)
        for name, kind in columns.items():
            if kind is str:
                continue
            values = pd.to_numeric(table[name].str.strip(), errors="coerce").to_numpy(np.float64)
            bad = np.isnan(values) | ((values != np.round(values)) if kind is int else False)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise CTRError(
                    f"{path}, line {i + 2}: expected {name} to be a number"
                    f"{' (an integer)' if kind is int else ''}, got {table[name].iloc[i]!r}"
                ) from None
        raise
    return table, np.arange(2, len(table) + 2, dtype=np.int64)


def read_ml20m(data_dir: str | Path) -> MovieLensRaw:
    """Read and validate MovieLens-20M: ratings.csv and movies.csv (no user features)."""
    data_dir = Path(data_dir)
    how = how_to_get("ml-20m", ML20M_FILES, data_dir)
    require_files(data_dir, ML20M_FILES, "MovieLens-20M", how)

    path = data_dir / "movies.csv"
    table, line_no = _read_csv(path, {"movieId": int, "title": str, "genres": str}, how)
    movie_ids = table["movieId"].to_numpy()
    check_unique(movie_ids, line_no, path, "movie id")
    genres = split_genres(table["genres"], none_label=ML20M_NO_GENRES)
    items = items_table(movie_ids, table["title"].to_numpy(dtype=object), genres)
    del table

    path = data_dir / "ratings.csv"
    columns = {"userId": int, "movieId": int, "rating": float, "timestamp": int}
    table, line_no = _read_csv(path, columns, how)
    ratings = pd.DataFrame(
        {
            "user_id": table["userId"].to_numpy(),
            "movie_id": table["movieId"].to_numpy(),
            "rating": table["rating"].to_numpy(),
            "timestamp": table["timestamp"].to_numpy(),
        }
    )
    del table
    check_known(ratings, {"movie_id": (items["movie_id"].to_numpy(), "movies.csv")}, line_no, path)
    users = pd.DataFrame({"user_id": np.unique(ratings["user_id"].to_numpy())})
    genre_names = sorted({g for gs in items["genres"] for g in gs})
    return MovieLensRaw(ratings, users, items, genre_names, [])
