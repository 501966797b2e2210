"""Reading and validating the MovieLens-100K files.

    raw = read_movielens("data/ml-100k")   # u.data, u.item, u.user, u.genre, u.occupation
    raw.ratings                            # user_id, movie_id, rating, timestamp (100,000 rows)

A missing directory or file raises DataNotFoundError, saying where to get the
data; a malformed line raises a ValueError naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctr.errors import CTRError, MissingFileError

DATA_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation")
ARCHIVE_URL = "https://grouplens.org/datasets/movielens/100k/"


class DataNotFoundError(MissingFileError):
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
        are skipped; any other malformed line raises a CTRError (a ValueError)
        naming the file and the line.
    """
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise CTRError(f"{path}: expected {encoding} text, got undecodable bytes ({exc})") from None
    kept = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.rstrip("\r")]
    if not kept:
        raise CTRError(f"{path} is empty; {_how_to_get(path.parent)}")
    line_no = np.fromiter((n for n, _ in kept), dtype=np.int64, count=len(kept))
    counts = np.fromiter((line.count(sep) + 1 for _, line in kept), np.int64, len(kept))
    bad = np.flatnonzero(counts != num_fields)
    if bad.size:
        n, line = kept[bad[0]]
        raise CTRError(
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
        raise CTRError(
            f"{path}, line {line_no[i]}: expected {what} to be an integer, got {column.iloc[i]!r}"
        )
    return values.astype(np.int64)


def _check_allowed(
    values: np.ndarray, allowed: tuple, line_no: np.ndarray, path: Path, what: str
) -> None:
    bad = np.flatnonzero(~np.isin(values, allowed))
    if bad.size:
        i = bad[0]
        raise CTRError(
            f"{path}, line {line_no[i]}: expected {what} to be one of {allowed}, got {values[i]!r}"
        )


def _check_unique(ids: np.ndarray, line_no: np.ndarray, path: Path, what: str) -> None:
    dup = np.flatnonzero(pd.Series(ids).duplicated().to_numpy())
    if dup.size:
        i = dup[0]
        raise CTRError(f"{path}, line {line_no[i]}: duplicate {what} {ids[i]}")


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
        raise CTRError(
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
            raise CTRError(
                f"{path}, line {line_no[i]}: {column} {ratings[column].iloc[i]} is not in {source}"
            )
    return MovieLensRaw(ratings, users, items, genre_names, occupations)
