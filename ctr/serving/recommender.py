"""The recommender: raw MovieLens ids in, click probabilities or top-K movies out.

A trained ctr model needs glue to answer an application's questions: the
encoders, the side-feature tables, the titles and each user's training items.
`Recommender` holds all of it and answers pandas frames in two modes, told
apart by the presence of a `k` column:

    scores  columns user_id, movie_id (+ optional side features)
            -> one row per input row: score (click probability)
    top-K   columns user_id, k (+ optional exclude_seen, default true)
            -> per input row, k rows: user_id, rank (1..k), movie_id, title, score

    recommender = Recommender(model, adapter.preprocessor, adapter.train_interactions)
    recommender.predict(pd.DataFrame({"user_id": [196, 196], "movie_id": [242, 302]}))
    recommender.predict(pd.DataFrame({"user_id": [196], "k": [10]}))

Ids unknown to the model are scored with the unknown (OOV) index. A model
with a behaviour-history field sees each known user's most recent training
items; a row for an unknown user may send `history`, a list of movie ids
(most recent last, or "50|172|181"), and otherwise has an empty history. Side-feature
columns (gender, age in years, occupation, zip_code as a string, genres as a
list of names or "Action|Comedy") are used only for ids the bundled tables do
not know; known ids always use the tables. A missing required column or a value
of the wrong type raises `ServingInputError` (a ValueError) naming the column.

`save` / `load` write and read the recommender as plain files (weights, encoders
and tables, training items); `experiments.serving` wraps them as an MLflow
pyfunc model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ctr.data.masks import InteractionMask
from ctr.serving.errors import ServingInputError
from ctr.serving.history import bundled_histories, request_histories
from ctr.training.scoring import CatalogueScorer

if TYPE_CHECKING:
    from ctr.data.movielens import MovieLensPreprocessor

MODEL_ARTIFACT = "ctr_model"
PREPROCESSOR_ARTIFACT = "preprocessor"
TRAIN_ITEMS_ARTIFACT = "train_items"
ARTIFACT_FILES = {  # artifact name -> file name, as `save` writes them
    MODEL_ARTIFACT: "ctr_model.pt",
    PREPROCESSOR_ARTIFACT: "preprocessor.json",
    TRAIN_ITEMS_ARTIFACT: "train_items.npz",
}

USER_SIDE_COLUMNS = ("gender", "age", "occupation", "zip_code")
ITEM_SIDE_COLUMNS = ("genres",)
SCORE_COLUMNS = ("score",)
TOP_K_COLUMNS = ("user_id", "rank", "movie_id", "title", "score")
_MAX_ROWS_PER_FORWARD = 65_536  # bounds the activations of one forward pass


# --------------------------------------------------------------------- input checks
def _require(frame: pd.DataFrame, column: str, mode: str) -> None:
    if column not in frame.columns:
        raise ServingInputError(
            f"expected a column {column!r} ({mode}), got columns {list(frame.columns)}"
        )


def _int_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """(N,) int64 of an integer column; nulls, fractions and text are errors naming it."""
    values = frame[column]
    if pd.api.types.is_bool_dtype(values):
        raise ServingInputError(f"expected column {column!r} to hold integers, got booleans")
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.to_numpy(np.int64)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(numbers) | (numbers != np.round(numbers)))
    if bad.size:
        i = bad[0]
        raise ServingInputError(
            f"expected column {column!r} to hold integers, got {values.iloc[i]!r} in row {i}"
        )
    return numbers.astype(np.int64)


def _bool_column(frame: pd.DataFrame, column: str, default: bool) -> np.ndarray:
    """(N,) bool; a missing column or a null means `default`."""
    if column not in frame.columns:
        return np.full(len(frame), default)
    out = np.full(len(frame), default)
    for i, value in enumerate(frame[column].tolist()):  # one value per top-K row: few
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        if not isinstance(value, bool | np.bool_):
            raise ServingInputError(
                f"expected column {column!r} to hold true/false, got {value!r} in row {i}"
            )
        out[i] = bool(value)
    return out


def _genres_lists(values: pd.Series) -> list[Any]:
    """Genres as lists of names: a list stays, "A|B" is split, a null stays None."""
    out: list[Any] = []
    for i, value in enumerate(values.tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            out.append(None)
        elif isinstance(value, str):
            out.append([g for g in value.split("|") if g])
        elif isinstance(value, list | tuple | np.ndarray):
            out.append([str(g) for g in value])
        else:
            raise ServingInputError(
                f"expected column 'genres' to hold lists of genre names or 'A|B' strings, "
                f"got {value!r} in row {i}"
            )
    return out


def _zip_codes(values: pd.Series) -> pd.Series:
    """Zip codes as strings; numbers are zero-padded to 5 digits (2139 -> "02139")."""

    def one(value: Any) -> Any:
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            return f"{int(value):05d}"
        if isinstance(value, float) and value.is_integer():
            return f"{int(value):05d}"
        return value

    return values.astype(object).map(one)


# ------------------------------------------------------------------------ the core
class Recommender:
    """A ctr model with everything it needs to answer raw-id requests.

    Args:
        model: a trained ctr model: forward(batch of encoded fields) -> logits (B, 1).
        preprocessor: the run's encoders plus user and item tables (titles included).
        train_items: the TRAINING interactions (columns user_id, movie_id, raw ids), each
            user's in time order (as `adapter.train_interactions` gives them): the items
            top-K skips when exclude_seen is true, and, for a model with a `history`
            field, each known user's history (the most recent ones).
        num_threads: torch threads of a forward pass (set for the pass only); None
            keeps torch's setting. One thread is the default: a request's batch is
            small, and on a shared machine two threads contending for cores made a
            1,682-row pass ~10x slower than one thread.

    `predict(frame)` answers both modes (see the module docstring).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessor: MovieLensPreprocessor,
        train_items: pd.DataFrame,
        num_threads: int | None = 1,
    ) -> None:
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"expected num_threads >= 1 or None, got {num_threads}")
        self.num_threads = num_threads
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()  # the trained model stays where it is
        self.model = model.eval()
        self.preprocessor = preprocessor
        pre = preprocessor
        self.item_ids = pre.item_ids  # (I,) catalogue in movie-id order
        self.titles = pre.items["title"].to_numpy(dtype=object)  # (I,)
        self.item_features = {  # field -> (I,) or (I, G)
            field: torch.from_numpy(values) for field, values in pre.catalogue_features().items()
        }
        self.user_features = {  # field -> (U,) in user-table order
            field: torch.from_numpy(values) for field, values in pre.user_table_features().items()
        }
        self.user_fields = tuple(self.user_features)
        self.train_items = train_items[["user_id", "movie_id"]].reset_index(drop=True)
        user_rows = pre.user_rows(train_items["user_id"].to_numpy())
        item_rows = pre.item_rows(train_items["movie_id"].to_numpy())
        known = (user_rows >= 0) & (item_rows >= 0)
        # (U + 1, I) bool, bit-packed: each user's training items, and a last, empty row for
        # users the table does not know (table row -1); a request densifies its users' rows
        shape = (len(pre.user_ids) + 1, len(self.item_ids))
        self.seen = InteractionMask.from_pairs(user_rows[known], item_rows[known], shape)
        # (U + 1, L) each known user's latest training items, or None without a history field
        self.user_history = bundled_histories(model, pre, self.train_items, user_rows, known)
        # the catalogue tiled for a chunk of top-K users, built once
        self.catalogue = CatalogueScorer(self.item_features, chunk_rows=_MAX_ROWS_PER_FORWARD)

    # ---------------------------------------------------------------- dispatch
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Top-K when the frame has a `k` column, else scores (see the module docstring)."""
        if not isinstance(frame, pd.DataFrame):
            raise ServingInputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        if "k" in frame.columns:
            if "movie_id" in frame.columns:
                raise ServingInputError(
                    "expected either a 'movie_id' column (scores) or a 'k' column (top-K), "
                    "got both; send one request per mode"
                )
            return self.top_k(frame)
        return self.score(frame)

    # ------------------------------------------------------------------ scores
    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows (user_id, movie_id, optional side features) -> a `score` column."""
        mode = "scores: user_id and movie_id"
        _require(frame, "user_id", mode)
        _require(frame, "movie_id", mode)
        rows = self._raw_rows(frame, with_items=True)
        encoded = self.preprocessor.encode_frame(rows)
        batch = {field: torch.from_numpy(values) for field, values in encoded.items()}
        if self.user_history is not None:
            user_ids = rows["user_id"].to_numpy()
            batch["history"] = request_histories(self, frame, user_ids)
        scores = self._probabilities(batch, len(rows))
        return pd.DataFrame({"score": scores.astype(np.float64)})

    # ------------------------------------------------------------------- top-K
    def top_k(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows (user_id, k, optional exclude_seen) -> the k best movies of each row's user.

        Every catalogue item is scored for every row's user in one batched pass;
        ties rank by movie id. With exclude_seen (the default) the user's training
        items are skipped; k larger than what is left returns what is left.
        """
        mode = "top-K: user_id and k"
        _require(frame, "user_id", mode)
        _require(frame, "k", mode)
        user_ids = _int_column(frame, "user_id")
        ks = _int_column(frame, "k")
        if len(ks) and ks.min() < 1:
            i = int(np.argmin(ks))
            raise ServingInputError(f"expected column 'k' to be >= 1, got {ks[i]} in row {i}")
        exclude = _bool_column(frame, "exclude_seen", default=True)
        users = self._user_batch(frame, user_ids)  # field -> (R,)
        if self.user_history is not None:
            users["history"] = request_histories(self, frame, user_ids)  # (R, L)
        table_rows = self.preprocessor.user_rows(user_ids)  # (R,), -1 unknown -> the empty row

        num_items = len(self.item_ids)
        out: dict[str, list[np.ndarray]] = {c: [] for c in TOP_K_COLUMNS}
        with self._torch_threads():
            for start, stop, logits in self.catalogue.chunks(self.model, users):  # (R, I)
                scores = torch.sigmoid(logits).numpy()  # (R, I)
                R = stop - start
                skip = self.seen.rows(table_rows[start:stop]) & exclude[start:stop, None]  # (R, I)
                scores_masked = np.where(skip, -np.inf, scores)
                # stable sort of -score: equal scores keep movie-id order
                order = np.argsort(-scores_masked, axis=1, kind="stable")  # (R, I)
                available = num_items - skip.sum(axis=1)  # (R,)
                for r in range(R):
                    k = int(min(ks[start + r], available[r]))
                    best = order[r, :k]
                    out["user_id"].append(np.full(k, user_ids[start + r], dtype=np.int64))
                    out["rank"].append(np.arange(1, k + 1, dtype=np.int64))
                    out["movie_id"].append(self.item_ids[best].astype(np.int64))
                    out["title"].append(self.titles[best])
                    out["score"].append(scores[r, best].astype(np.float64))
        if not out["user_id"]:
            return pd.DataFrame({c: pd.Series(dtype=_TOP_K_DTYPES[c]) for c in TOP_K_COLUMNS})
        return pd.DataFrame({c: np.concatenate(v) for c, v in out.items()})

    # ----------------------------------------------------------------- helpers
    def _raw_rows(self, frame: pd.DataFrame, with_items: bool) -> pd.DataFrame:
        """Validated raw rows for encode_frame; side values kept only for unknown ids."""
        rows = pd.DataFrame({"user_id": _int_column(frame, "user_id")})
        rows["movie_id"] = _int_column(frame, "movie_id") if with_items else self.item_ids[0]
        unknown_user = self.preprocessor.user_rows(rows["user_id"].to_numpy()) < 0
        unknown_item = self.preprocessor.item_rows(rows["movie_id"].to_numpy()) < 0
        for column in USER_SIDE_COLUMNS:
            if column in frame.columns:
                values = frame[column].reset_index(drop=True).astype(object)
                if column == "zip_code":
                    values = _zip_codes(values)
                elif column == "age":
                    numbers = pd.to_numeric(values, errors="coerce")
                    bad = np.flatnonzero(numbers.isna().to_numpy() & values.notna().to_numpy())
                    if bad.size:
                        raise ServingInputError(
                            f"expected column 'age' to hold years (a number), got "
                            f"{values.iloc[bad[0]]!r} in row {bad[0]}"
                        )
                    values = numbers.astype(object)
                rows[column] = values.where(pd.Series(unknown_user), None)
        if with_items and "genres" in frame.columns:
            lists = _genres_lists(frame["genres"])
            rows["genres"] = [g if u else None for g, u in zip(lists, unknown_item, strict=True)]
        return rows

    def _user_batch(self, frame: pd.DataFrame, user_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """Encoded user-side fields of each row: field -> (R,)."""
        rows = self.preprocessor.user_rows(user_ids)
        sends_side = any(c in frame.columns for c in USER_SIDE_COLUMNS)
        if (rows >= 0).all() or not sends_side:
            # fast path: a table lookup (unknown users -> the zero row)
            index = torch.from_numpy(np.where(rows >= 0, rows, 0))
            known = torch.from_numpy(rows >= 0)
            return {
                field: torch.where(known, self.user_features[field].index_select(0, index), 0)
                for field in self.user_fields
            }
        encoded = self.preprocessor.encode_frame(self._raw_rows(frame, with_items=False))
        return {field: torch.from_numpy(encoded[field]) for field in self.user_fields}

    @contextmanager
    def _torch_threads(self) -> Iterator[None]:
        """Run the block on `num_threads` torch threads; restore the setting after."""
        previous = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @torch.inference_mode()
    def _probabilities(self, batch: dict[str, torch.Tensor], n: int) -> np.ndarray:
        """(n,) float32 click probabilities, in forward passes of bounded size."""
        parts = []
        with self._torch_threads():
            for start in range(0, n, _MAX_ROWS_PER_FORWARD):
                part = {f: v[start : start + _MAX_ROWS_PER_FORWARD] for f, v in batch.items()}
                parts.append(torch.sigmoid(self.model(part)).reshape(-1))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return torch.cat(parts).numpy()

    # ----------------------------------------------------------- (de)serialise
    def save(self, directory: str | Path) -> dict[str, str]:
        """Write the artifacts (model weights + config + schema, preprocessor, training
        items) into `directory`; return {artifact name: path} for log_model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {name: str(directory / file) for name, file in ARTIFACT_FILES.items()}
        model = self.model
        torch.save(
            {
                "config": model.config.model_dump(mode="json"),
                "schema": model.schema.to_dict(),
                "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            },
            paths[MODEL_ARTIFACT],
        )
        Path(paths[PREPROCESSOR_ARTIFACT]).write_text(json.dumps(self.preprocessor.to_dict()))
        np.savez_compressed(
            paths[TRAIN_ITEMS_ARTIFACT],
            user_id=self.train_items["user_id"].to_numpy(np.int64),
            movie_id=self.train_items["movie_id"].to_numpy(np.int64),
        )
        return paths

    @classmethod
    def load(cls, artifacts: dict[str, str], num_threads: int | None = 1) -> Recommender:
        """Rebuild from the paths `save` returned (or MLflow's context.artifacts)."""
        from ctr.config import ExperimentConfig
        from ctr.data.movielens import MovieLensPreprocessor
        from ctr.data.schema import DatasetSchema
        from ctr.models import create_model

        state = torch.load(artifacts[MODEL_ARTIFACT], map_location="cpu", weights_only=True)
        config = ExperimentConfig.model_validate(state["config"])
        model = create_model(config.model_name, DatasetSchema.from_dict(state["schema"]), config)
        model.load_state_dict(state["model_state"])
        pre_dict = json.loads(Path(artifacts[PREPROCESSOR_ARTIFACT]).read_text())
        preprocessor = MovieLensPreprocessor.from_dict(pre_dict)
        with np.load(artifacts[TRAIN_ITEMS_ARTIFACT]) as npz:
            train_items = pd.DataFrame({"user_id": npz["user_id"], "movie_id": npz["movie_id"]})
        return cls(model, preprocessor, train_items, num_threads)


_TOP_K_DTYPES = {
    "user_id": "int64",
    "rank": "int64",
    "movie_id": "int64",
    "title": "object",
    "score": "float64",
}


# ------------------------------------------------------------------- text output
def format_recommendations(table: pd.DataFrame, user_id: int, source: str) -> str:
    """A top-K frame as text for a terminal: rank, score, movie id and title.

    `source` names where the recommendations came from (e.g. a model URI).
    """
    if table.empty:
        return f"no movies left to recommend to user {user_id} ({source})"
    lines = [f"top {len(table)} movies for user {user_id} ({source}):"]
    lines.append(f"{'rank':>4}  {'score':>6}  {'movie':>5}  title")
    for row in table.itertuples(index=False):
        lines.append(f"{row.rank:>4}  {row.score:6.4f}  {row.movie_id:>5}  {row.title}")
    return "\n".join(lines)
