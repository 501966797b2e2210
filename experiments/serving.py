"""Serving through MLflow: the recommender as a pyfunc model.

`ctr.serving.Recommender` answers raw-id requests (scores and top-K; see its
module for the two modes). `RecommenderModel` wraps it as an MLflow pyfunc
model, logged beside the PyTorch model of every tracked run (name
`recommender`) and registered by `ctr promote` as `<model>-movielens-recommender`:

    model = mlflow.pyfunc.load_model("models:/deepfm-movielens-recommender@champion")
    model.predict(pd.DataFrame({"user_id": [196, 196], "movie_id": [242, 302]}))
    model.predict(pd.DataFrame({"user_id": [196], "k": [10]}))

A bad request (`ServingInputError`, a ValueError) becomes an MlflowException
with INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd

from ctr.serving import Recommender
from experiments.artifacts import silence_pickle_warnings

if TYPE_CHECKING:
    import torch

    from ctr.data.movielens import MovieLensPreprocessor
    from ctr.training import TrainResult

RECOMMENDER_NAME = "recommender"  # name of the logged pyfunc model of every run
REGISTRY_SUFFIX = "-recommender"  # <model>-movielens -> <model>-movielens-recommender
DEFAULT_MODEL_URI = "models:/deepfm-movielens-recommender@champion"
THREADS_ENV = "CTR_SERVING_THREADS"  # torch threads per forward pass of a loaded model


# --------------------------------------------------------------------- pyfunc model
class RecommenderModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper of `Recommender`; its state lives in the artifacts."""

    def __init__(self) -> None:
        self.recommender: Recommender | None = None

    def load_context(self, context) -> None:
        threads = os.environ.get(THREADS_ENV, "1").strip()
        if not threads.isdigit():
            raise ValueError(f"expected {THREADS_ENV} to be an integer >= 0, got {threads!r}")
        # 0: leave torch's own thread setting
        self.recommender = Recommender.load(context.artifacts, int(threads) or None)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        if self.recommender is None:  # predict without load_context: load now
            self.load_context(context)
        try:
            return self.recommender.predict(model_input)
        except ValueError as exc:  # bad input: the scoring server answers 400
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def recommender_signature():
    """Input columns of both modes (optional beyond user_id) and the output columns."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("long", "user_id"),
            ColSpec("long", "movie_id", required=False),  # scores mode
            ColSpec("long", "k", required=False),  # top-K mode
            # any: MLflow would turn "no" into True; the recommender checks for true/false
            ColSpec(AnyType(), "exclude_seen", required=False),
            ColSpec("string", "gender", required=False),
            ColSpec("double", "age", required=False),  # years; double lets rows leave it null
            ColSpec("string", "occupation", required=False),
            ColSpec("string", "zip_code", required=False),
            ColSpec(AnyType(), "genres", required=False),  # ["Drama", ...] or "Drama|..."
            # unknown users of a history model: [50, 172, ...] movie ids, most recent last
            ColSpec(AnyType(), "history", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("long", "user_id", required=False),
            ColSpec("long", "rank", required=False),
            ColSpec("long", "movie_id", required=False),
            ColSpec("string", "title", required=False),
            ColSpec("double", "score"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """A scores-mode request: how likely is user 196 to watch movies 242 and 302?"""
    return pd.DataFrame({"user_id": [196, 196], "movie_id": [242, 302]})


def code_paths() -> list[str]:
    """The `ctr` and `experiments` packages, copied into the logged model."""
    from experiments.artifacts import ctr_package_dir

    return [str(ctr_package_dir()), str(Path(__file__).resolve().parent)]


def _log_kwargs(recommender: Recommender, tmp: str) -> dict[str, Any]:
    from experiments.artifacts import pip_requirements

    return {
        "python_model": RecommenderModel(),
        "artifacts": recommender.save(tmp),
        "code_paths": code_paths(),
        "signature": recommender_signature(),
        "input_example": input_example(),
        "pip_requirements": [*pip_requirements(), f"mlflow=={mlflow.__version__}"],
    }


# ------------------------------------------------------------------ building one
def save_recommender(
    path: str | Path,
    model: torch.nn.Module,
    preprocessor: MovieLensPreprocessor,
    train_items: pd.DataFrame,
) -> str:
    """Save a recommender as an MLflow model directory (no tracking server needed)."""
    recommender = Recommender(model, preprocessor, train_items)
    # CloudPickle is how a Python-object pyfunc is saved (see silence_pickle_warnings)
    with tempfile.TemporaryDirectory() as tmp, silence_pickle_warnings():
        mlflow.pyfunc.save_model(str(path), **_log_kwargs(recommender, tmp))
    return str(path)


def log_recommender(run_id: str, result: TrainResult) -> str:
    """Log the run's recommender as the model `recommender`; return its model URI.

    Called as an extra model logger of `MLflowCallback`, inside the active run
    `run_id`, after the PyTorch model is logged.
    """
    if result.preprocessor is None or not hasattr(result.preprocessor, "encode_frame"):
        raise ValueError(
            f"expected a MovieLensPreprocessor to build the recommender of run {run_id}, "
            f"got {type(result.preprocessor).__name__}"
        )
    if result.train_interactions is None:
        raise ValueError(
            f"expected the training interactions (user_id, movie_id) in the result of run "
            f"{run_id} to build its recommender, got None; train with ctr.training.fit, "
            f"which carries the adapter's training split"
        )
    recommender = Recommender(result.model, result.preprocessor, result.train_interactions)
    # CloudPickle is how a Python-object pyfunc is logged (see silence_pickle_warnings)
    with tempfile.TemporaryDirectory() as tmp, silence_pickle_warnings():
        info = mlflow.pyfunc.log_model(name=RECOMMENDER_NAME, **_log_kwargs(recommender, tmp))
    return info.model_uri


def recommend(model_uri: str, user_id: int, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
    """Top-k of one user from a logged or registered recommender (rank, movie_id, title, score)."""
    model = mlflow.pyfunc.load_model(model_uri)
    request = pd.DataFrame(
        {"user_id": [int(user_id)], "k": [int(k)], "exclude_seen": [exclude_seen]}
    )
    return model.predict(request)
