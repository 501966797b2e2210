"""Synthetic interactions at MovieLens-20M shape, through the same protocol.

    raw = generate_interactions(2_000, 500, 50_000, seed=0)   # a MovieLensRaw
    adapter = get_adapter("synthetic-1m")                     # 6,925 users, 5,980 items
    schema, train_ds, val_ds, test_ds = adapter.build()

The defaults are the shape of MovieLens-20M (138,493 users, 26,744 rated
movies, 20M ratings). Everything is drawn with numpy, vectorised over all
interactions (no loop over users), from one seed:

- item popularity follows a power law: the item of popularity rank r is drawn
  with probability proportional to (r + 1) ** -item_exponent (Zipf-like);
- user activity is heavy-tailed: 3 interactions each (the protocol needs a
  training, a validation and a test one), plus a multinomial share of the rest
  with log-normal weights; no user holds more than half the catalogue, so every
  user keeps training negatives to draw;
- each (user, item) pair occurs once: repeated draws are redrawn, first from
  the popularity law, then uniformly (a heavy user's last items are rare ones);
- timestamps strictly increase along each user's interactions;
- every item has 1 or more genres, from a skewed mix (Drama commonest).

The data has no user features: its fields are user_id, movie_id and genres,
like MovieLens-20M's.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ctr.data.movielens.adapter import LeaveOneOutAdapter
from ctr.data.movielens.raw import MovieLensRaw, items_table
from ctr.errors import CTRError

ML20M_USERS, ML20M_ITEMS, ML20M_INTERACTIONS = 138_493, 26_744, 20_000_000
MIN_PER_USER = 3  # one training, one validation and one test interaction
MAX_CATALOGUE_SHARE = 0.5  # of the items one user may hold
GENRES = (
    "Drama", "Comedy", "Thriller", "Romance", "Action", "Crime", "Horror", "Documentary",
    "Adventure", "Sci-Fi", "Mystery", "Fantasy", "War", "Children", "Musical", "Animation",
    "Western", "Film-Noir", "IMAX",
)  # fmt: skip
_GENRE_PROBABILITY = 0.45 * 0.82 ** np.arange(len(GENRES))  # of an item having each genre
_POPULARITY_ROUNDS = 4  # redraws of repeated pairs from the popularity law, then uniform
_FIRST_TIMESTAMP, _TIME_SPAN = 789_652_009, 20 * 365 * 86_400  # ML-20M's first rating, 20 years
_MEAN_GAP_SECONDS = 3_600.0


def synthetic_shape(num_interactions: int) -> tuple[int, int]:
    """(users, items) of a synthetic data set of `num_interactions`, scaled from ML-20M.

    Users scale linearly (about 144 interactions each, as in ML-20M); the
    catalogue with the square root (synthetic-100k: 692 x 1,891, near
    MovieLens-100K's 943 x 1,682; synthetic-1m: 6,925 x 5,980, near ML-1M's 6,040 x 3,706).
    """
    ratio = num_interactions / ML20M_INTERACTIONS
    num_users = max(1, round(ML20M_USERS * ratio))
    num_items = max(4, round(ML20M_ITEMS * math.sqrt(ratio)))
    return num_users, num_items


def _check_sizes(num_users: int, num_items: int, num_interactions: int) -> int:
    """The most interactions one user may have; a CTRError if the sizes cannot work."""
    if num_users < 1 or num_items < 4:
        raise CTRError(f"expected >= 1 user and >= 4 items, got {num_users} and {num_items}")
    cap = max(MIN_PER_USER, int(num_items * MAX_CATALOGUE_SHARE))
    low, high = MIN_PER_USER * num_users, cap * num_users
    if not low <= num_interactions <= high:
        raise CTRError(
            f"expected between {low:,} and {high:,} interactions for {num_users:,} users "
            f"and {num_items:,} items ({MIN_PER_USER} to {cap} per user), got {num_interactions:,}"
        )
    return cap


def _activity(rng: np.random.Generator, num_users: int, total: int, cap: int, sigma: float):
    """(U,) interactions per user: MIN_PER_USER + a log-normal-weighted share, each <= cap."""
    weights = rng.lognormal(0.0, sigma, num_users)
    counts = MIN_PER_USER + rng.multinomial(
        total - MIN_PER_USER * num_users, weights / weights.sum()
    )
    while (excess := int(np.maximum(counts - cap, 0).sum())) > 0:  # hand the overflow on
        counts = np.minimum(counts, cap)
        room = np.where(counts < cap, weights, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def _repeated(users: np.ndarray, items: np.ndarray, rows: np.ndarray, num_items: int):
    """Those of `rows` whose (user, item) pair occurred at an earlier row of `rows`."""
    keys = users[rows] * num_items + items[rows]
    order = np.argsort(keys, kind="stable")  # equal pairs keep their row order
    sorted_keys = keys[order]
    return rows[order[1:][sorted_keys[1:] == sorted_keys[:-1]]]


def generate_interactions(
    num_users: int = ML20M_USERS,
    num_items: int = ML20M_ITEMS,
    num_interactions: int = ML20M_INTERACTIONS,
    seed: int = 0,
    item_exponent: float = 1.0,
    activity_sigma: float = 1.2,
) -> MovieLensRaw:
    """Seeded synthetic ratings, users and catalogue (see the module docstring).

    Args:
        item_exponent: the power law's exponent; larger = more skewed popularity.
        activity_sigma: sigma of the log-normal weights of user activity.

    Returns:
        a MovieLensRaw: ratings (user_id, movie_id, rating in half stars,
        timestamp; grouped by user, in time order), users (user_id 1..U only),
        items (movie_id 1..I, title, genres), the genre names, no occupations.
    """
    cap = _check_sizes(num_users, num_items, num_interactions)
    rng = np.random.default_rng(seed)
    counts = _activity(rng, num_users, num_interactions, cap, activity_sigma)  # (U,)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)  # (N,) grouped by user

    # items by popularity rank, then renamed so that ids do not follow popularity
    cdf = np.cumsum((np.arange(num_items) + 1.0) ** -item_exponent)  # (I,)
    items = np.searchsorted(cdf, rng.random(num_interactions) * cdf[-1], side="right")
    redraw = _repeated(users, items, np.arange(num_interactions), num_items)
    rounds = 0
    while redraw.size:
        if rounds < _POPULARITY_ROUNDS:
            draws = np.searchsorted(cdf, rng.random(redraw.size) * cdf[-1], side="right")
        else:
            draws = rng.integers(0, num_items, redraw.size)
        items[redraw] = draws
        touched = np.zeros(num_users, dtype=bool)
        touched[users[redraw]] = True  # only these users' pairs can repeat now
        redraw = _repeated(users, items, np.flatnonzero(touched[users]), num_items)
        rounds += 1
    movie_ids = rng.permutation(num_items).astype(np.int64)[items] + 1  # (N,)

    # timestamps: a start per user, then strictly increasing gaps
    gaps = np.ceil(rng.exponential(_MEAN_GAP_SECONDS, num_interactions)).astype(np.int64)
    gaps = np.maximum(gaps, 1)
    elapsed = np.cumsum(gaps)
    first_row = np.cumsum(counts) - counts  # (U,)
    start = _FIRST_TIMESTAMP + rng.integers(0, _TIME_SPAN, num_users)  # (U,)
    timestamps = (start - elapsed[first_row])[users] + elapsed  # (N,)
    ratings = pd.DataFrame(
        {
            "user_id": users + 1,
            "movie_id": movie_ids,
            "rating": rng.integers(1, 11, num_interactions) / 2.0,
            "timestamp": timestamps,
        }
    )

    # genres: each genre independently, at least one per item
    flags = rng.random((num_items, len(GENRES))) < _GENRE_PROBABILITY  # (I, G)
    bare = np.flatnonzero(~flags.any(axis=1))
    genre_share = _GENRE_PROBABILITY / _GENRE_PROBABILITY.sum()
    flags[bare, rng.choice(len(GENRES), bare.size, p=genre_share)] = True
    rows, genre_cols = np.nonzero(flags)
    names = np.asarray(GENRES, dtype=object)[genre_cols]
    per_item = np.split(names, np.cumsum(np.bincount(rows, minlength=num_items))[:-1])
    ids = np.arange(1, num_items + 1, dtype=np.int64)
    titles = ("Synthetic movie " + pd.Series(ids).astype(str)).to_numpy(dtype=object)
    items_df = items_table(ids, titles, [g.tolist() for g in per_item])
    users_df = pd.DataFrame({"user_id": np.arange(1, num_users + 1, dtype=np.int64)})
    return MovieLensRaw(ratings, users_df, items_df, sorted(GENRES), [])


_NAME = re.compile(r"synthetic(?:-(\d+)([km]?))?")


def parse_synthetic_name(name: str) -> int:
    """'synthetic' -> 20,000,000 interactions; 'synthetic-50k' -> 50,000; 'synthetic-5m' -> 5M."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise CTRError(
            f"expected a synthetic data set name like 'synthetic', 'synthetic-100k' or "
            f"'synthetic-5m', got {name!r}"
        )
    if match.group(1) is None:
        return ML20M_INTERACTIONS
    return int(match.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2)]


class SyntheticAdapter(LeaveOneOutAdapter):
    """Synthetic interactions (generate_interactions) through the leave-one-out protocol.

    Registered as "synthetic" (ML-20M shape) and "synthetic-<N>" ("synthetic-1m":
    1M interactions, users and items from `synthetic_shape`). `data_dir` is not
    read. The data is drawn from `seed` (0), the same for every run; the
    evaluation candidates still come from `data.eval_seed`.

    Args:
        name: the registered name; it sets the number of interactions.
        num_users, num_items, num_interactions: explicit sizes instead.
    """

    default_data_dir = ""
    user_columns = ()

    def __init__(
        self,
        data_dir: str | Path | None = None,
        data_config=None,
        feature_config=None,
        history_config=None,
        name: str = "synthetic",
        num_users: int | None = None,
        num_items: int | None = None,
        num_interactions: int | None = None,
        seed: int = 0,
    ) -> None:
        from ctr.config import DataConfig

        data_config = data_config if data_config is not None else DataConfig(dataset=name)
        self.name = name
        super().__init__(data_dir or ".", data_config, feature_config, history_config)
        total = num_interactions if num_interactions is not None else parse_synthetic_name(name)
        users, items = synthetic_shape(total)
        self.sizes = (num_users or users, num_items or items, total)
        _check_sizes(*self.sizes)
        self.seed = seed

    def read_raw(self) -> MovieLensRaw:
        return generate_interactions(*self.sizes, seed=self.seed)
