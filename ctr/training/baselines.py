"""Reference models that need no training, for sanity rows in result tables."""

from __future__ import annotations

import numpy as np
import torch

from ctr.data.dataset import Batch


class PopularityModel(torch.nn.Module):
    """Scores an item by how often it occurs among the training positives.

    logits = log(count + 1) - log(max_count + 1), so the most popular item gets
    logit 0 (probability 0.5) and rarer items less. The ranking metrics only use
    the order (the same for any increasing map of the count); AUC is likewise
    order-only, while LogLoss of this uncalibrated score is a reference at best.
    Encoded index 0 (unknown items, e.g. movies absent from training) has count 0.

    Args:
        item_popularity: (V,) counts per encoded item index (V = the item field's
            vocabulary size); entry 0 is ignored and treated as 0.
        field: name of the item field in a batch.

    Example:
        model = PopularityModel.from_interactions(train_movie_ids, vocabulary_size=1683)
        logits = model({"movie_id": torch.tensor([3, 0])})  # (2, 1)
    """

    def __init__(self, item_popularity: np.ndarray | torch.Tensor, field: str = "movie_id") -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(item_popularity), dtype=torch.float64).reshape(-1)
        if counts.numel() < 1:
            raise ValueError("expected item_popularity with at least one entry, got none")
        if (counts < 0).any() or torch.isnan(counts).any():
            raise ValueError("expected non-negative item counts, got a negative or NaN entry")
        counts = counts.clone()
        counts[0] = 0.0
        self.field = field
        logits = torch.log1p(counts) - torch.log1p(counts.max())  # (V,)
        self.register_buffer("popularity", counts.float())
        self.register_buffer("item_logits", logits.float())

    @classmethod
    def from_interactions(
        cls, item_index: np.ndarray | torch.Tensor, vocabulary_size: int, field: str = "movie_id"
    ) -> PopularityModel:
        """Count encoded item indices (e.g. the train positives' movie_id column)."""
        index = np.asarray(torch.as_tensor(item_index).cpu().numpy(), dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= vocabulary_size):
            raise ValueError(
                f"expected item indices in [0, {vocabulary_size}), "
                f"got range [{index.min()}, {index.max()}]"
            )
        return cls(np.bincount(index, minlength=vocabulary_size), field=field)

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch[field]: (B,) encoded item indices -> logits (B, 1)."""
        if self.field not in batch:
            raise ValueError(f"expected a batch with field {self.field!r}, got {sorted(batch)}")
        index = batch[self.field]
        V = self.item_logits.shape[0]
        # indices past the vocabulary are unknown items, like index 0
        index = torch.where((index >= 0) & (index < V), index, torch.zeros_like(index))
        return self.item_logits[index].unsqueeze(-1)  # (B, 1)
