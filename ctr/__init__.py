"""ctr: CTR models (DeepFM, xDeepFM, AttentionDeepFM) for PyTorch.

The library never imports mlflow; experiment tracking lives in `experiments`.
"""

__version__ = "0.1.0"

from ctr.config import ExperimentConfig, load_config  # noqa: E402

__all__ = ["ExperimentConfig", "__version__", "load_config"]
