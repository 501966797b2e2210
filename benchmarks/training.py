"""Training and evaluation speed: the library beside a plain reference and DeepCTR-Torch.

    python benchmarks/training.py [--model deepfm] [--rounds 3] [--threads 2]
                                  [--reference-dropout P] [--no-deepctr]

For configs/<model>_movielens.yaml each round times, on the same epoch's rows:

- library: one Trainer epoch (draws the epoch's negatives, shuffled batches,
  the config's loss, Adam) and one RankingEvaluator pass over val (1 + 999
  sampled candidates per user and full ranking against the catalogue, metrics
  included);
- reference (deepfm only): DeepFM written plainly below with its own modules
  (one embedding table for the sparse fields with per-field offsets, an
  EmbeddingBag for the genres, FM, an nn.Sequential MLP with nn.Dropout), BCE,
  Adam, batches of a permuted index over pre-built tensors; twice, with the
  library's dropout and with none. Its scoring: the same rows, pre-built, in
  batches, no metrics;
- DeepCTR-Torch (if installed, e.g. by `make bench-env`): its DeepFM, xDeepFM
  or AutoInt at the config's sizes, one epoch of its own fit() and its
  predict() on the same evaluation rows.

Rounds alternate the contenders so that machine noise hits all alike; medians
are printed, with each contender's rows/s and the library's speed as a multiple
of it. Speed only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctr.config import ExperimentConfig, load_config  # noqa: E402
from ctr.data.schema import DatasetSchema  # noqa: E402
from ctr.models import create_model  # noqa: E402
from ctr.training import Trainer, build_data  # noqa: E402
from ctr.training.evaluator import RankingEvaluator  # noqa: E402
from ctr.utils import seed_everything  # noqa: E402

DEEPCTR_MODEL = {"deepfm": "DeepFM", "xdeepfm": "xDeepFM", "attention_deepfm": "AutoInt"}


# ----------------------------------------------------------------- reference
class ReferenceDeepFM(nn.Module):
    """DeepFM (Guo et al., 2017) as one would write it plainly in PyTorch.

    Sparse fields share one (sum V_i, D) table: field i's index x reads row
    offset_i + x. The genres are mean-pooled by an EmbeddingBag that skips
    padding 0. Logit = bias + sum of first-order weights + FM + MLP.

    Shapes: sparse (B, S) int64, genres (B, L) int64 -> logits (B,)
    """

    def __init__(
        self, vocab_sizes: list[int], genres_vocab: int, dim: int, hidden: list[int], dropout: float
    ) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(vocab_sizes)[:-1].tolist()]))
        self.embedding = nn.Embedding(sum(vocab_sizes), dim)
        self.weight = nn.Embedding(sum(vocab_sizes), 1)
        self.genres = nn.EmbeddingBag(genres_vocab, dim, mode="mean", padding_idx=0)
        self.genres_weight = nn.EmbeddingBag(genres_vocab, 1, mode="mean", padding_idx=0)
        self.bias = nn.Parameter(torch.zeros(1))
        layers: list[nn.Module] = []
        prev = dim * (len(vocab_sizes) + 1)
        for units in hidden:
            layers += [nn.Linear(prev, units), nn.ReLU(), nn.Dropout(dropout)]
            prev = units
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, sparse: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        rows = sparse + self.offsets  # (B, S)
        e = torch.cat([self.embedding(rows), self.genres(genres).unsqueeze(1)], dim=1)  # (B, F, D)
        first = self.bias + self.weight(rows).sum(1) + self.genres_weight(genres)  # (B, 1)
        fm = 0.5 * (e.sum(1).square() - e.square().sum(1)).sum(1, keepdim=True)  # (B, 1)
        return (first + fm + self.mlp(e.flatten(1))).squeeze(-1)


def reference_tensors(
    features: dict[str, torch.Tensor], sparse: list[str], genres: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S) sparse indices and (N, L) genre indices from columnar features."""
    return torch.stack([features[n] for n in sparse], dim=1), features[genres]


def reference_epoch(model, optimizer, rows, batch_size: int, generator) -> float:
    sparse, genres, labels = rows
    order = torch.randperm(len(labels), generator=generator)
    model.train()
    for start in range(0, len(labels), batch_size):
        idx = order[start : start + batch_size]
        loss = F.binary_cross_entropy_with_logits(model(sparse[idx], genres[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@torch.inference_mode()
def reference_score(model, tables, batch_size: int) -> int:
    model.eval()
    n_rows = 0
    for sparse, genres in tables:
        for start in range(0, len(sparse), batch_size):
            model(sparse[start : start + batch_size], genres[start : start + batch_size])
        n_rows += len(sparse)
    return n_rows


# ------------------------------------------------------------- DeepCTR-Torch
def import_deepctr():
    """The deepctr_torch module, or None if it is not installed.

    Importing deepctr_torch starts a thread that asks PyPI for a newer release;
    benchmarks run offline, so no thread is started while it is imported.
    """
    import threading

    import sklearn.metrics  # noqa: F401  (deepctr imports it; keep its import outside the patch)

    class _NotStarted:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def start(self) -> None:
            pass

    real = threading.Thread
    threading.Thread = _NotStarted
    try:
        import deepctr_torch
        import deepctr_torch.models  # noqa: F401
    except ImportError:
        return None
    finally:
        threading.Thread = real
    return deepctr_torch


def deepctr_model(deepctr, name: str, schema: DatasetSchema, config: ExperimentConfig):
    """DeepCTR-Torch's counterpart of `name` at the config's sizes, compiled with Adam + BCE."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat

    dim = config.features.embedding_dim
    columns = []
    for f in (schema[n] for n in schema.field_names):
        feat = SparseFeat(f.name, vocabulary_size=f.vocabulary_size, embedding_dim=dim)
        if f.max_length:
            feat = VarLenSparseFeat(feat, maxlen=f.max_length, combiner=f.combiner)
        columns.append(feat)
    common = dict(
        dnn_hidden_units=tuple(config.dnn.hidden_units),
        dnn_dropout=config.dnn.dropout,
        l2_reg_embedding=config.training.l2_embedding,
        device="cpu",
    )
    models = deepctr.models
    if name == "deepfm":
        model = models.DeepFM(columns, columns, l2_reg_linear=0.0, **common)
    elif name == "xdeepfm":
        model = models.xDeepFM(
            columns,
            columns,
            cin_layer_size=tuple(config.cin.layer_sizes),
            cin_split_half=config.cin.split_half,
            l2_reg_linear=0.0,
            **common,
        )
    else:
        att = config.attention
        model = models.AutoInt(
            columns,
            columns,
            att_layer_num=att.num_layers,
            att_head_num=att.num_heads,
            att_res=att.use_residual,
            **common,
        )
    model.compile(
        torch.optim.Adam(model.parameters(), lr=config.training.learning_rate),
        "binary_crossentropy",
    )
    return model


def numpy_features(features: dict[str, torch.Tensor], names: list[str]) -> dict[str, np.ndarray]:
    return {n: features[n].numpy() for n in names}


# ---------------------------------------------------------------------- main
def build_full_rows(split) -> dict[str, torch.Tensor]:
    """Every (user, catalogue item) row of an EvalSplit, as full ranking scores them."""
    users, items = split.num_users, len(split.item_ids)
    user_idx = torch.arange(users).repeat_interleave(items)
    item_idx = torch.arange(items).repeat(users)
    rows = {k: torch.as_tensor(v)[user_idx] for k, v in split.user_features.items()}
    rows.update({k: torch.as_tensor(v)[item_idx] for k, v in split.item_features.items()})
    return rows


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def quiet(fn, *args):
    """Call fn with its prints (DeepCTR-Torch prints a line or two per call) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deepfm", choices=sorted(DEEPCTR_MODEL))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--reference-dropout",
        type=float,
        default=None,
        help="dropout of the reference's first run (default: the library config's)",
    )
    parser.add_argument("--no-deepctr", action="store_true", help="leave DeepCTR-Torch out")
    parser.add_argument(
        "--override", action="append", default=[], help="config override for the library"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    config = load_config(
        root / f"configs/{args.model}_movielens.yaml",
        [
            "training.early_stopping_patience=0",
            f"training.num_threads={args.threads}",
            *args.override,
        ],
    )
    cfg = config.training
    _, schema, train_ds, val_ds, _ = build_data(config)
    seed_everything(0)
    lib_model = create_model(args.model, schema, config)
    trainer = Trainer(
        lib_model, schema, config, train_ds, val_ds, None, checkpoint_dir="/tmp/ctr-bench"
    )
    evaluator = RankingEvaluator(val_ds, batch_size=cfg.eval_batch_size)
    eval_tables = [dict(val_ds.candidates.features), build_full_rows(val_ds)]
    eval_rows = sum(len(next(iter(t.values()))) for t in eval_tables)
    n_train = len(train_ds.sample_epoch(0, config.seed))
    names = schema.field_names

    # contender name -> (train one epoch of round r, score the eval rows)
    contenders: dict[str, tuple] = {}
    contenders["library"] = (lambda r, rows: trainer._train_epoch(r), evaluator.evaluate)
    notes = []

    sparse = [f.name for f in schema.sparse_fields]
    sequence = [f.name for f in schema.sequence_fields]
    if args.model == "deepfm" and len(sequence) == 1 and not schema.dense_fields:
        dropout = config.dnn.dropout if args.reference_dropout is None else args.reference_dropout
        ref_tables = [reference_tensors(t, sparse, sequence[0]) for t in eval_tables]
        for p in dict.fromkeys([dropout, 0.0]):
            ref = ReferenceDeepFM(
                [schema[n].vocabulary_size for n in sparse],
                schema[sequence[0]].vocabulary_size,
                config.features.embedding_dim,
                config.dnn.hidden_units,
                p,
            )
            opt = torch.optim.Adam(ref.parameters(), lr=cfg.learning_rate)

            def train(r, rows, ref=ref, opt=opt):
                gen = torch.Generator().manual_seed(r)
                return reference_epoch(ref, opt, rows["reference"], cfg.batch_size, gen)

            def score(model=None, ref=ref):
                return reference_score(ref, ref_tables, cfg.eval_batch_size)

            contenders[f"reference, dropout {p:g}"] = (train, score)
    else:
        notes.append("reference: written for DeepFM only; run with --model deepfm")

    deepctr = None if args.no_deepctr else import_deepctr()
    if deepctr is not None:
        dc = quiet(deepctr_model, deepctr, args.model, schema, config)
        dc_eval = [numpy_features(t, names) for t in eval_tables]

        def dc_train(r, rows):
            quiet(dc.fit, rows["deepctr"], rows["labels"], cfg.batch_size, 1, 0)

        def dc_score(model=None):
            for table in dc_eval:
                dc.predict(dict(table), cfg.eval_batch_size)

        contenders[f"DeepCTR-Torch {DEEPCTR_MODEL[args.model]}"] = (dc_train, dc_score)
        notes.append(
            f"DeepCTR-Torch {deepctr.__version__}: its fit() and predict() (DataLoader over a "
            f"TensorDataset), embedding {config.features.embedding_dim}, DNN "
            f"{config.dnn.hidden_units}, dropout {config.dnn.dropout:g}, "
            f"L2 {cfg.l2_embedding:g}, Adam lr {cfg.learning_rate:g}"
        )
        if args.model == "attention_deepfm":
            notes.append(
                f"AutoInt: heads of {config.features.embedding_dim // config.attention.num_heads}"
                f" (D / H, fixed by DeepCTR-Torch) against the library's "
                f"{config.attention.attention_dim}; no FM part"
            )
    elif not args.no_deepctr:
        notes.append(
            "DeepCTR-Torch: not installed, left out (`make bench-env` builds .venv-bench "
            "with it; run this script with .venv-bench/bin/python)"
        )

    extras = ["draws the epoch's negatives (timed apart below)", "validates every batch"]
    if cfg.recency_half_life is not None:
        extras.append(f"weighs the loss by recency (half-life {cfg.recency_half_life:g})")
    if cfg.loss != "bce":
        extras.append(f"{cfg.loss} loss over grouped batches")
    if cfg.l2_embedding > 0:
        extras.append(f"adds an L2 penalty ({cfg.l2_embedding:g})")
    print(
        f"{args.model} on ml-100k, {args.threads} threads, torch {torch.__version__}, batch "
        f"{cfg.batch_size}, {n_train:,} training rows/epoch, {eval_rows:,} rows scored/eval"
    )
    print(f"library epoch also: {'; '.join(extras)}")
    print("library eval: ranks and computes every metric; the others only score the rows")
    for note in notes:
        print(note)

    train_s: dict[str, list[float]] = {k: [] for k in contenders}
    eval_s: dict[str, list[float]] = {k: [] for k in contenders}
    sample_s = []
    order = list(contenders)
    for r in range(1, args.rounds + 1):
        start = time.perf_counter()
        epoch_rows = train_ds.sample_epoch(r, config.seed)  # the library draws these too
        sample_s.append(time.perf_counter() - start)
        rows = {
            "reference": (
                *reference_tensors(epoch_rows.features, sparse, sequence[0] if sequence else ""),
                epoch_rows.labels,
            )
            if len(sequence) == 1
            else None,
            "deepctr": numpy_features(epoch_rows.features, names),
            "labels": epoch_rows.labels.numpy(),
        }
        for name in order if r % 2 else order[::-1]:
            train, score = contenders[name]
            train_s[name].append(timed(train, r, rows))
            eval_s[name].append(timed(score, lib_model))
            print(
                f"round {r}: {name}: train {train_s[name][-1]:.2f}s, eval {eval_s[name][-1]:.2f}s",
                flush=True,
            )

    lib_t, lib_e = statistics.median(train_s["library"]), statistics.median(eval_s["library"])
    print()
    print(f"negative sampling, inside the library epoch: {statistics.median(sample_s):.2f}s")
    header = f"{'':28s}{'train s':>9s}{'rows/s':>10s}{'library':>9s}"
    print(header + f"{'eval s':>9s}{'rows/s':>11s}{'library':>9s}")
    for name in order:
        t, e = statistics.median(train_s[name]), statistics.median(eval_s[name])
        print(
            f"{name:28s}{t:9.2f}{n_train / t:10,.0f}{t / lib_t:8.2f}x"
            f"{e:9.2f}{eval_rows / e:11,.0f}{e / lib_e:8.2f}x"
        )
    print(
        "library = the library's speed as a multiple of the row's. Targets: DeepFM train "
        ">= 0.8x the reference (same dropout); >= 3x DeepCTR-Torch in training, >= 6x in eval"
    )


if __name__ == "__main__":
    main()
