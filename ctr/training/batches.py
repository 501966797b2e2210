"""One epoch's training batches, in the order the Trainer steps through them.

Each batch is (features, labels, weights or None, loss scale). The order comes
from `generator`, seeded from (seed, epoch), so it is the same on every rank of
a distributed run; each rank then keeps its own part of every batch
(ctr.training.distributed.shard) and scales its loss by that part's share.
Outside torchrun the part is the whole batch and the scale 1.

Example:
    for batch, labels, weights, scale in row_batches(rows, g, 1024, None, device):
        loss = scale * F.binary_cross_entropy_with_logits(model(batch).squeeze(-1), labels)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ctr.data.dataset import Batch, TabularDataset
from ctr.data.epoch import EpochRows
from ctr.training import distributed

Step = tuple[Batch, torch.Tensor, torch.Tensor | None, float]


def row_batches(
    rows: EpochRows | TabularDataset,
    generator: torch.Generator,
    batch_size: int,
    row_weights: torch.Tensor | None,
    device: torch.device,
) -> Iterator[Step]:
    """Shuffled batches of `batch_size` rows (bce), with each row's loss weight.

    Args:
        rows: the epoch's rows (what sample_epoch gives), on `device`.
        row_weights: (len(rows),) loss weight of each row, or None (unweighted).

    Yields:
        (features {field: (B, ...)}, labels (B,), weights (B,) or None, loss scale).
    """
    for index in rows.shuffled_batch_indices(batch_size, generator, device=device):
        part = distributed.shard(len(index))
        if part is None:  # fewer rows than ranks: skipped by every rank
            continue
        index, scale = index[part[0]], part[1]
        batch, labels = rows.take(index)
        yield batch, labels, None if row_weights is None else row_weights[index], scale


def grouped_batches(
    train_ds,
    rows: EpochRows | TabularDataset,
    generator: torch.Generator,
    batch_size: int,
    positive_weights: torch.Tensor | None,
    device: torch.device,
) -> Iterator[Step]:
    """Batches of whole groups (bpr, softmax): b positives followed by their b*K negatives.

    b = batch_size // (1 + K), so a batch holds about batch_size rows.

    Args:
        train_ds: the NegativeSamplingTrainSet that drew `rows` (it knows their layout).
        rows: the epoch's rows, on `device`.
        positive_weights: (N,) loss weight of each positive's group, or None.

    Yields:
        (features {field: (b + b*K, ...)}, labels (b + b*K,), weights (b,) or None,
        loss scale); the rows are the b positives, then the negatives group by group.
    """
    n = train_ds.num_positives
    k = train_ds.num_negatives
    per_batch = max(1, batch_size // (1 + k))
    # the permutation moves once; each batch's groups are computed there, from its positives
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, per_batch):
        part = distributed.shard(min(per_batch, n - start))
        if part is None:  # fewer groups than ranks: skipped by every rank
            continue
        local, scale = part
        pos = order[start : start + per_batch][local]  # (b,)
        groups = train_ds.group_rows(pos, check=False)  # (b, 1 + K): positive, its negatives
        # the b positives first, then their negatives group by group (as the loss reads them)
        batch, labels = rows.take(torch.cat([groups[:, 0], groups[:, 1:].reshape(-1)]))
        weights = None if positive_weights is None else positive_weights[pos]
        yield batch, labels, weights, scale
