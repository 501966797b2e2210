"""Serving: a trained model answering raw-id requests (scores and top-K).

The library side only: no MLflow here. `experiments.serving` wraps the
`Recommender` as an MLflow pyfunc model.
"""

from ctr.serving.recommender import Recommender, ServingInputError, format_recommendations

__all__ = ["Recommender", "ServingInputError", "format_recommendations"]
