"""Training-step speed of every registered model on an ML-100K-shaped batch.

For each model at batch 1024 (2 threads): parameters, milliseconds per
forward + backward + Adam step (median over repeats after warm-up) and training
samples per second. Beside them, a bare DeepFM written inline with no
abstraction (an nn.Embedding per field, the FM formula, an nn.Sequential MLP)
as the reference the library DeepFM is compared with. Models are measured in
alternating rounds so that machine noise hits them alike.

    .venv/bin/python benchmarks/models.py [--rounds 7] [--steps 20] [--target-ms 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ctr.config import ExperimentConfig
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models import create_model, list_models

BATCH_SIZE = 1024
SPARSE_VOCAB = {
    "user_id": 944,
    "movie_id": 1650,
    "gender": 3,
    "age": 8,
    "occupation": 22,
    "zip_prefix": 460,
}
GENRES_VOCAB, GENRES_LENGTH, EMBEDDING_DIM = 19, 6, 16


def movielens_schema() -> DatasetSchema:
    fields = [FieldSchema(n, FeatureType.SPARSE, v, EMBEDDING_DIM) for n, v in SPARSE_VOCAB.items()]
    fields.append(
        FieldSchema(
            "genres",
            FeatureType.SEQUENCE,
            GENRES_VOCAB,
            EMBEDDING_DIM,
            max_length=GENRES_LENGTH,
            combiner="mean",
        )
    )
    return DatasetSchema(tuple(fields))


def random_batch(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = {
        n: torch.randint(1, v, (BATCH_SIZE,), generator=generator) for n, v in SPARSE_VOCAB.items()
    }
    genres = torch.randint(1, GENRES_VOCAB, (BATCH_SIZE, GENRES_LENGTH), generator=generator)
    lengths = torch.randint(1, 4, (BATCH_SIZE, 1), generator=generator)
    batch["genres"] = genres * (torch.arange(GENRES_LENGTH) < lengths)  # 1-3 genres, then 0s
    labels = (torch.rand(BATCH_SIZE, generator=generator) < 0.2).float()
    return batch, labels


class BareDeepFM(nn.Module):
    """DeepFM with no abstraction: the reference for the library's overhead."""

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        d = EMBEDDING_DIM
        self.emb = nn.ModuleDict(
            {n: nn.Embedding(v, d, padding_idx=0) for n, v in SPARSE_VOCAB.items()}
        )
        self.lin = nn.ModuleDict(
            {n: nn.Embedding(v, 1, padding_idx=0) for n, v in SPARSE_VOCAB.items()}
        )
        self.genres_emb = nn.EmbeddingBag(GENRES_VOCAB, d, mode="mean", padding_idx=0)
        self.genres_lin = nn.EmbeddingBag(GENRES_VOCAB, 1, mode="mean", padding_idx=0)
        self.bias = nn.Parameter(torch.zeros(1))
        layers: list[nn.Module] = []
        prev = d * (len(SPARSE_VOCAB) + 1)
        for units in config.dnn.hidden_units:
            layers += [nn.Linear(prev, units), nn.ReLU(), nn.Dropout(config.dnn.dropout)]
            prev = units
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = [self.emb[n](batch[n]) for n in SPARSE_VOCAB] + [self.genres_emb(batch["genres"])]
        e = torch.stack(e, dim=1)  # (B, F, D)
        linear = self.bias + sum(self.lin[n](batch[n]) for n in SPARSE_VOCAB)
        linear = linear + self.genres_lin(batch["genres"])  # (B, 1)
        fm = 0.5 * (e.sum(1).square() - e.square().sum(1)).sum(1, keepdim=True)  # (B, 1)
        return linear + fm + self.mlp(e.flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds")
    parser.add_argument("--steps", type=int, default=20, help="most steps per measurement")
    parser.add_argument("--target-ms", type=float, default=300.0, help="time per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = ExperimentConfig()
    schema = movielens_schema()
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(generator) for _ in range(8)]

    models: dict[str, nn.Module] = {
        name: create_model(name, schema, config) for name in list_models()
    }
    models["bare_deepfm"] = BareDeepFM(config)
    optimizers = {n: torch.optim.Adam(m.parameters(), lr=1.0e-3) for n, m in models.items()}
    criterion = nn.BCEWithLogitsLoss()

    def run(name: str, steps: int) -> float:
        model, optimizer = models[name], optimizers[name]
        model.train()
        start = time.perf_counter()
        for i in range(steps):
            batch, labels = batches[i % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(batch).squeeze(-1), labels)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps * 1000.0

    # Warm-up, then size each model's measurement to about --target-ms of work.
    steps = {}
    for name in models:
        run(name, 2)
        estimate = run(name, args.warmup)
        steps[name] = max(2, min(args.steps, round(args.target_ms / estimate)))
    steps["deepfm"] = steps["bare_deepfm"] = max(steps["deepfm"], steps["bare_deepfm"])
    # DeepFM and its bare reference run back to back, first one then the other, each round.
    pair = ["deepfm", "bare_deepfm"]
    others = [n for n in models if n not in pair]
    times: dict[str, list[float]] = {n: [] for n in models}
    for r in range(args.rounds):
        for name in (pair if r % 2 == 0 else pair[::-1]) + others:
            times[name].append(run(name, steps[name]))

    print(
        f"batch {BATCH_SIZE}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.rounds} rounds (fwd + bwd + Adam step)"
    )
    print(f"{'model':<18}{'params':>10}{'ms/batch':>11}{'samples/s':>12}{'steps/round':>13}")
    for name in pair + others:
        ms = statistics.median(times[name])
        params = sum(p.numel() for p in models[name].parameters())
        print(
            f"{name:<18}{params:>10,}{ms:>11.2f}{BATCH_SIZE / ms * 1000:>12,.0f}{steps[name]:>13}"
        )
    ratios = [a / b for a, b in zip(times["deepfm"], times["bare_deepfm"], strict=True)]
    print(
        f"library deepfm / bare deepfm: {statistics.median(ratios):.3f} "
        f"(median of per-round ratios; range {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
