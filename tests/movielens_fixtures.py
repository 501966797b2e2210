"""Small MovieLens-1M and MovieLens-20M files, written in each release's format.

The real archives are not in the repository (and tests never download), so
the tests of the larger adapters and of the downloader read these: 40 users,
30 movies, a few hundred ratings, with what the real files have that a
reader can get wrong (latin-1 titles, '::' separators, ':' inside titles,
quoted commas in CSV titles, "(no genres listed)", timestamp ties).

Built in: movie 30 is rated once, as user 1's last (test) rating, so it
never occurs in training; movie 29 is never rated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

NUM_USERS, NUM_MOVIES = 40, 30
TEST_ONLY_MOVIE, UNRATED_MOVIE = 30, 29
GENRE_CHOICES = ["Action", "Adventure", "Children's", "Comedy", "Drama", "Film-Noir", "Sci-Fi"]


def fixture_ratings(seed: int = 0) -> pd.DataFrame:
    """user_id, movie_id, rating, timestamp: 4..12 distinct movies per user, ties included."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, NUM_USERS + 1):  # a test fixture: a loop over 40 users is fine
        k = int(rng.integers(4, 13))
        movies = rng.choice(np.arange(1, UNRATED_MOVIE), size=k, replace=False)
        times = 978_300_000 + np.sort(rng.integers(0, 40, size=k))  # few values: ties
        for movie, t in zip(movies, times, strict=True):
            rows.append((user, int(movie), int(rng.integers(1, 6)), int(t)))
    rows.append((1, TEST_ONLY_MOVIE, 5, 978_400_000))  # user 1's last rating
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    return ratings.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # file order


def fixture_movies() -> pd.DataFrame:
    """movie_id, title, genres (list)."""
    titles = [f"Movie {i} (199{i % 10})" for i in range(1, NUM_MOVIES + 1)]
    titles[0] = "Amélie (2001)"  # latin-1 in ML-1M, UTF-8 in ML-20M
    titles[1] = "Star Wars: Episode IV - A New Hope (1977)"  # ':' next to the '::' separator
    titles[2] = "American President, The (1995)"  # a comma: quoted in movies.csv
    genres = [[GENRE_CHOICES[(i * 3 + j) % 7] for j in range(1 + i % 3)] for i in range(30)]
    genres[4] = []  # "(no genres listed)" in ML-20M
    return pd.DataFrame({"movie_id": range(1, NUM_MOVIES + 1), "title": titles, "genres": genres})


def fixture_users(seed: int = 0) -> pd.DataFrame:
    """user_id, gender, age code, occupation code, zip code (ML-1M's users.dat)."""
    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame(
        {
            "user_id": range(1, NUM_USERS + 1),
            "gender": rng.choice(["F", "M"], NUM_USERS),
            "age": rng.choice([1, 18, 25, 35, 45, 50, 56], NUM_USERS),
            "occupation": rng.integers(0, 21, NUM_USERS),
            "zip": [f"{48000 + 37 * u}" if u % 5 else f"{98100 + u}-2117" for u in range(40)],
        }
    )


def write_ml1m(data_dir: Path, seed: int = 0) -> Path:
    """ratings.dat, users.dat, movies.dat ('::'-separated, latin-1) in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ratings, users, movies = fixture_ratings(seed), fixture_users(seed), fixture_movies()
    lines = ["::".join(map(str, row)) for row in ratings.itertuples(index=False)]
    (data_dir / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    lines = ["::".join(map(str, row)) for row in users.itertuples(index=False)]
    (data_dir / "users.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    lines = [f"{m.movie_id}::{m.title}::{'|'.join(m.genres)}" for m in movies.itertuples()]
    (data_dir / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return data_dir


def write_ml20m(data_dir: Path, seed: int = 0) -> Path:
    """ratings.csv, movies.csv (UTF-8, header line, half-star ratings) in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ratings = fixture_ratings(seed)
    ratings["rating"] = ratings["rating"] - 0.5 * (ratings["user_id"] % 2)
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    ratings.to_csv(data_dir / "ratings.csv", index=False)
    movies = fixture_movies()
    movies["genres"] = ["|".join(g) if g else "(no genres listed)" for g in movies["genres"]]
    movies.columns = ["movieId", "title", "genres"]
    movies.to_csv(data_dir / "movies.csv", index=False, encoding="utf-8")
    return data_dir
