"""Training-step speed of every registered model on an ML-100K-shaped batch.

For each model, built from its configs/<model>_movielens.yaml (the layer sizes
it ships with) at batch 1024 (2 threads): parameters, milliseconds per
forward + backward + Adam step (median over repeats after warm-up) and training
samples per second. Beside them, a bare DeepFM written inline with no
abstraction (an nn.Embedding per field, the FM formula, an nn.Sequential MLP)
as the reference the library DeepFM is compared with; the two alternate step
by step so that machine noise hits both alike. Random data: speed only.

    .venv/bin/python benchmarks/models.py [--rounds 5] [--budget-s 25] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ctr.config import ExperimentConfig, load_config
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models import create_model, list_models

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
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


def model_config(name: str) -> ExperimentConfig:
    """The model's shipped config (its layer sizes), or the defaults if it has none."""
    path = CONFIGS / f"{name}_movielens.yaml"
    return load_config(path) if path.is_file() else ExperimentConfig(model_name=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds")
    parser.add_argument("--steps", type=int, default=20, help="most steps per model and round")
    parser.add_argument("--target-ms", type=float, default=250.0, help="work per model and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--budget-s", type=float, default=25.0, help="no new round after this")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    schema = movielens_schema()
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(generator) for _ in range(8)]

    models: dict[str, nn.Module] = {
        name: create_model(name, schema, model_config(name)) for name in list_models()
    }
    models["bare_deepfm"] = BareDeepFM(model_config("deepfm"))
    optimizers = {n: torch.optim.Adam(m.parameters(), lr=1.0e-3) for n, m in models.items()}
    criterion = nn.BCEWithLogitsLoss()

    def step(name: str, i: int) -> float:
        """One training step of model `name` on batch i; returns its milliseconds."""
        model, optimizer = models[name], optimizers[name]
        batch, labels = batches[i % len(batches)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(batch).squeeze(-1), labels)
        loss.backward()
        optimizer.step()
        return (time.perf_counter() - start) * 1000.0

    for model in models.values():
        model.train()
    # Warm-up, then size each model's share of a round to about --target-ms of work.
    steps = {}
    for name in models:
        estimate = statistics.median(step(name, i) for i in range(args.warmup))
        steps[name] = max(2, min(args.steps, round(args.target_ms / estimate)))
    pair = ["deepfm", "bare_deepfm"]
    steps["deepfm"] = steps["bare_deepfm"] = max(6, steps["deepfm"], steps["bare_deepfm"])
    others = [n for n in models if n not in pair]
    # Every round: DeepFM and the bare reference alternate step by step (so machine
    # noise hits both alike), then every other model takes its steps.
    times: dict[str, list[float]] = {n: [] for n in models}
    deadline = time.perf_counter() + args.budget_s
    rounds = 0
    while rounds < args.rounds and (rounds < 2 or time.perf_counter() < deadline):
        rounds += 1  # past the budget (a loaded machine) no new round starts
        for i in range(steps["deepfm"]):
            for name in pair if i % 2 == 0 else pair[::-1]:
                times[name].append(step(name, i))
        for name in others:
            times[name] += [step(name, i) for i in range(steps[name])]

    print(
        f"batch {BATCH_SIZE}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"one step = forward + backward + Adam; median (and min) over the measured steps "
        f"after warm-up ({rounds} rounds)"
    )
    print(f"{'model':<18}{'params':>10}{'ms/step':>10}{'(min)':>8}{'samples/s':>12}{'steps':>7}")
    for name in pair + others:
        ms = statistics.median(times[name])
        params = sum(p.numel() for p in models[name].parameters())
        print(
            f"{name:<18}{params:>10,}{ms:>10.2f}{min(times[name]):>8.2f}"
            f"{BATCH_SIZE / ms * 1000:>12,.0f}{len(times[name]):>7}"
        )
    lib, bare = times["deepfm"], times["bare_deepfm"]
    print(
        f"library deepfm / bare deepfm: {statistics.median(lib) / statistics.median(bare):.3f} "
        f"(medians), {min(lib) / min(bare):.3f} (minima)"
    )


if __name__ == "__main__":
    main()
