"""Reading and validating the MovieLens files, one function per format.

    raw = read_movielens("data/ml-100k")   # u.data, u.item, u.user, u.genre, u.occupation
    raw.ratings                            # user_id, movie_id, rating, timestamp (100,000 rows)
    raw = read_ml1m("data/ml-1m")          # ratings.dat, users.dat, movies.dat  (raw_large.py)
    raw = read_ml20m("data/ml-20m")        # ratings.csv, movies.csv; no user file

Every reader returns a MovieLensRaw with the same columns, so the protocol
and the preprocessor never see the file format. A missing directory or file
raises DataNotFoundError, saying where to get the data; a malformed line
raises a ValueError naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctr.data.movielens.textfiles import check_allowed, check_known, check_unique, read_table
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


def require_files(data_dir: Path, files: tuple[str, ...], title: str, how_to_get: str) -> None:
    """DataNotFoundError naming the missing directory or files, and `how_to_get` them."""
    if not data_dir.is_dir():
        raise DataNotFoundError(f"{title} directory not found: {data_dir}; {how_to_get}")
    missing = [name for name in files if not (data_dir / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{title} file(s) missing: {', '.join(str(data_dir / m) for m in missing)}; "
            f"{how_to_get}"
        )


@dataclass
class MovieLensRaw:
    """The raw tables, validated.

    ratings: user_id, movie_id, rating, timestamp (file order).
    users: user_id and the data set's user columns, e.g. age, gender,
        occupation, zip_code (sorted by user_id); only user_id where the data
        set has no user file.
    items: movie_id, title, genres (list of genre names) (sorted by movie_id).
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    genre_names: list[str]
    occupations: list[str]


def items_table(movie_ids: np.ndarray, titles: np.ndarray, genres: list[list[str]]) -> pd.DataFrame:
    """The catalogue of a MovieLensRaw, sorted by movie_id."""
    items = pd.DataFrame({"movie_id": movie_ids, "title": titles, "genres": genres})
    return items.sort_values("movie_id", kind="stable").reset_index(drop=True)


def read_movielens(data_dir: str | Path) -> MovieLensRaw:
    """Read and validate the MovieLens-100K files: u.data, u.item, u.user, u.genre, u.occupation."""
    data_dir = Path(data_dir)
    how = _how_to_get(data_dir)
    require_files(data_dir, DATA_FILES, "MovieLens-100K", how)

    path = data_dir / "u.genre"
    cols, line_no = read_table(
        path, "|", 2, {1: "the genre index"}, encoding="latin-1", how_to_get=how
    )
    genre_index = cols[1].to_numpy()
    if sorted(genre_index.tolist()) != list(range(len(genre_index))):
        raise CTRError(
            f"{path}: expected genre indices 0..{len(genre_index) - 1}, got {genre_index.tolist()}"
        )
    genre_names = cols[0].to_numpy(dtype=object)[np.argsort(genre_index)].tolist()

    path = data_dir / "u.occupation"
    cols, _ = read_table(path, "|", 1, {}, encoding="latin-1", how_to_get=how)
    occupations = [str(v).strip() for v in cols[0]]

    path = data_dir / "u.user"
    cols, line_no = read_table(
        path, "|", 5, {0: "the user id", 1: "the age"}, encoding="latin-1", how_to_get=how
    )
    user_ids = cols[0].to_numpy()
    check_unique(user_ids, line_no, path, "user id")
    occupation = cols[3].str.strip().to_numpy(dtype=object)
    check_allowed(occupation, tuple(occupations), line_no, path, "the occupation")
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
    cols, line_no = read_table(
        path,
        "|",
        5 + num_genres,
        {0: "the movie id", **flag_columns},
        encoding="latin-1",
        how_to_get=how,
    )
    movie_ids = cols[0].to_numpy()
    check_unique(movie_ids, line_no, path, "movie id")
    flags = cols[list(flag_columns)].to_numpy()  # (I, G)
    for g, what in enumerate(flag_columns.values()):
        check_allowed(flags[:, g], (0, 1), line_no, path, what)
    rows, genre_cols = np.nonzero(flags)
    names = np.asarray(genre_names, dtype=object)
    per_item = np.split(names[genre_cols], np.cumsum(np.bincount(rows, minlength=len(flags)))[:-1])
    items = items_table(movie_ids, cols[1].to_numpy(dtype=object), [g.tolist() for g in per_item])

    path = data_dir / "u.data"
    fields = ("user_id", "movie_id", "rating", "timestamp")
    cols, line_no = read_table(
        path, "\t", 4, {i: f"the {f}" for i, f in enumerate(fields)}, how_to_get=how
    )
    ratings = pd.DataFrame({f: cols[i].to_numpy() for i, f in enumerate(fields)})
    known = {"user_id": (users["user_id"].to_numpy(), "u.user")}
    known["movie_id"] = (items["movie_id"].to_numpy(), "u.item")
    check_known(ratings, known, line_no, path)
    return MovieLensRaw(ratings, users, items, genre_names, occupations)
