"""Catalogue scoring: the logits of every catalogue item for a batch of users.

Full-ranking evaluation (`RankingEvaluator`) and serving's top-K
(`ctr.serving.Recommender`) both need the (U, I) logits of every (user, item)
pair. A forward pass holds a chunk of u users: each user's fields repeated I
times beside the item table tiled u times, so row j * I + i is (user j, item i).
A chunk holds max(1, chunk_rows // I) users, so a pass has about chunk_rows rows
(at least one user's I rows); the tiled table is built once, at construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Batch = dict[str, torch.Tensor]
Model = torch.nn.Module | Callable[[Batch], torch.Tensor]


def forward_logits(model: Model, batch: Batch, rows: int) -> torch.Tensor:
    """(rows,) float32 logits of `model` on `batch`, which must answer one logit per row."""
    logits = model(batch)
    if logits.numel() != rows:
        raise ValueError(
            f"expected the model to return logits of shape ({rows}, 1), got {tuple(logits.shape)}"
        )
    return logits.reshape(rows).float()


class CatalogueScorer:
    """Scores every item of a fixed catalogue for any batch of users.

    Args:
        item_table: item field -> (I, ...) encoded values of the catalogue, on the
            device the model runs on.
        chunk_rows: about the most rows of one forward pass (bounds its activations).
        max_users: the most users a call will score, if known: the tiled table then
            holds no more than that many copies.

    Example:
        scorer = CatalogueScorer(split.item_features, chunk_rows=65536)
        logits = scorer.scores(model, split.user_features)  # (U, I)
        for start, end, logits in scorer.chunks(model, users):  # (end - start, I) each
            ...
    """

    def __init__(
        self, item_table: Batch, chunk_rows: int = 65_536, max_users: int | None = None
    ) -> None:
        if not item_table:
            raise ValueError("expected at least one item field in item_table, got none")
        if chunk_rows < 1:
            raise ValueError(f"expected chunk_rows >= 1, got {chunk_rows}")
        if max_users is not None and max_users < 1:
            raise ValueError(f"expected max_users >= 1 or None, got {max_users}")
        sizes = {k: v.shape[0] for k, v in item_table.items()}
        n_items = next(iter(sizes.values()))
        if n_items < 1 or any(n != n_items for n in sizes.values()):
            raise ValueError(
                f"expected every item field to hold the same number (>= 1) of catalogue rows, "
                f"got {sizes}"
            )
        n = max(1, chunk_rows // n_items)
        if max_users is not None:
            n = min(n, max_users)
        self.num_items = n_items
        self.chunk_users = n
        self.item_fields = tuple(item_table)
        device = next(iter(item_table.values())).device
        self._tiled: Batch = {  # row j * I + i is item i
            k: v.repeat(n, *([1] * (v.dim() - 1)))  # (n * I, ...)
            for k, v in item_table.items()
        }
        # the chunk-local user of each row: [0] * I + [1] * I + ...
        self._user_repeat = torch.arange(n, device=device).repeat_interleave(n_items)  # (n * I,)

    def check_users(self, users: Batch) -> int:
        """The number of users U in `users` (field -> (U, ...)); errors name the field."""
        if not users:
            raise ValueError("expected at least one user field, got none")
        overlap = sorted(set(users) & set(self.item_fields))
        if overlap:
            raise ValueError(
                f"expected disjoint user and item feature fields, got {overlap} in both"
            )
        sizes = {k: v.shape[0] for k, v in users.items()}
        U = next(iter(sizes.values()))
        if any(n != U for n in sizes.values()):
            raise ValueError(
                f"expected every user field to hold the same number of rows, got {sizes}"
            )
        return U

    def chunks(self, model: Model, users: Batch) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (start, end, logits (end - start, I)) for users [start, end), in order.

        Each forward pass runs under torch.inference_mode; the caller's mode is
        untouched between passes.
        """
        U, n_items, n = self.check_users(users), self.num_items, self.chunk_users
        for start in range(0, U, n):
            end = min(start + n, U)
            rows = (end - start) * n_items
            with torch.inference_mode():
                user_index = self._user_repeat[:rows] + start  # (rows,)
                batch = {k: v.index_select(0, user_index) for k, v in users.items()}
                batch.update({k: v[:rows] for k, v in self._tiled.items()})
                logits = forward_logits(model, batch, rows).view(end - start, n_items)  # (u, I)
            yield start, end, logits

    def scores(self, model: Model, users: Batch) -> torch.Tensor:
        """(U, I) logits of every catalogue item for every user in `users`."""
        parts = [logits for _, _, logits in self.chunks(model, users)]
        if not parts:
            device = self._user_repeat.device
            return torch.empty(0, self.num_items, device=device)
        return torch.cat(parts)  # (U, I)
