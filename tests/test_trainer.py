"""Trainer tests on the real ml-100k files with small, fast configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ctr.config import ConfigError, load_config
from ctr.training import Callback, build_data, build_trainer, evaluate_checkpoint
from ctr.training.baselines import PopularityModel
from ctr.training.evaluator import RankingEvaluator
from ctr.utils import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# small model, big batches, 4 negatives: an epoch takes a few seconds on 2 cores
FAST = [
    "data.num_negatives=4",
    "features.embedding_dim=8",
    "fm.embed_dim=8",
    "dnn.hidden_units=[32]",
    "training.batch_size=4096",
    "training.full_ranking=false",
    "training.eval_batch_size=131072",
]


@pytest.fixture(scope="module")
def built():
    """One data build (adapter, schema, train_ds, val_ds, test_ds) shared by the trainers."""
    return build_data(load_config(ROOT / "configs/deepfm_movielens.yaml", FAST))


@pytest.fixture(scope="module")
def data(built):
    _, schema, train_ds, val_ds, test_ds = built
    return schema, train_ds, val_ds, test_ds


@pytest.fixture
def make_trainer(built, tmp_path):
    """make_trainer(overrides, callbacks, name): the Trainer `fit` builds, on the shared data."""

    def make(overrides=(), callbacks=None, name="run"):
        config = load_config(ROOT / "configs/deepfm_movielens.yaml", [*FAST, *overrides])
        trainer, _ = build_trainer(config, callbacks, tmp_path / name, data=built)
        return trainer

    return make


def _without_timings(history):
    return [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in history]


def test_seeded_cpu_runs_are_bit_for_bit_repeatable(make_trainer):
    a = make_trainer(["training.num_epochs=1"], name="a")
    summary_a = a.fit()
    b = make_trainer(["training.num_epochs=1"], name="b")
    summary_b = b.fit()
    assert _without_timings(a.history) == _without_timings(b.history)
    assert summary_a["test_ndcg_at_10"] == summary_b["test_ndcg_at_10"]
    for (name, pa), pb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("extra", [[], ["training.ema_decay=0.99"]], ids=["plain", "ema"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(make_trainer, tmp_path, extra):
    full = make_trainer([*extra, "training.num_epochs=2"], name="full")
    full.fit()
    first = make_trainer([*extra, "training.num_epochs=1"], name="first")
    first.fit()
    resumed = make_trainer(
        [*extra, "training.num_epochs=2", f"training.resume_from={tmp_path / 'first' / 'last.pt'}"],
        name="resumed",
    )
    resumed.fit()
    assert resumed.epoch == 2
    assert _without_timings(resumed.history) == _without_timings(full.history)
    for (name, pa), pb in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name


def test_weight_average_is_what_is_evaluated_saved_and_returned(make_trainer, data, tmp_path):
    trainer = make_trainer(["training.num_epochs=1", "training.ema_decay=0.99"])
    summary = trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "best.pt", "cpu")
    averaged, trained = state["model_state"], state["train_model_state"]
    steps = data[1].sample_epoch(1, 42).num_batches(4096)
    assert state["ema_num_averaged"] == steps  # one update per optimizer step
    # the average lags the trained weights, so the two differ
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)
    # the returned model holds the averaged weights of the best epoch ...
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, averaged[name]), name
    # ... and they are what the metrics describe
    metrics = evaluate_checkpoint(tmp_path / "run" / "best.pt", split="val")
    assert metrics["val_ndcg_at_10"] == pytest.approx(summary["best_val_ndcg_at_10"])


def test_negatives_are_fresh_every_epoch_and_loss_falls(make_trainer, data):
    trainer = make_trainer(["training.num_epochs=2"])
    trainer.fit()
    losses = [h["train_loss"] for h in trainer.history]
    assert losses[1] < losses[0]
    _, train_ds, _, _ = data
    e1 = train_ds.sample_epoch(1, 42).features["movie_id"]
    e2 = train_ds.sample_epoch(2, 42).features["movie_id"]
    assert not torch.equal(e1, e2)


class Recorder(Callback):
    def __init__(self, fail_at_epoch=None):
        self.events = []
        self.fail_at_epoch = fail_at_epoch

    def on_train_begin(self, context):
        self.events.append(("begin", context.num_params > 0))

    def on_epoch_end(self, epoch, metrics):
        self.events.append(("epoch", epoch, sorted(metrics)))
        if epoch == self.fail_at_epoch:
            raise RuntimeError("boom")

    def on_checkpoint(self, epoch, path, is_best):
        assert Path(path).is_file()
        self.events.append(("checkpoint", epoch, is_best))

    def on_train_end(self, summary):
        self.events.append(("end", summary["best_epoch"]))

    def on_exception(self, exc):
        self.events.append(("exception", str(exc)))


def test_callbacks_see_every_epoch_checkpoint_and_the_summary(make_trainer):
    recorder = Recorder()
    trainer = make_trainer(["training.num_epochs=2"], callbacks=[recorder])
    summary = trainer.fit()
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert kinds.count("epoch") == 2
    epoch_keys = recorder.events[1][2]
    for key in [
        "train_loss",
        "lr",
        "epoch_seconds",
        "val_auc",
        "val_logloss",
        "val_hr_at_5",
        "val_hr_at_10",
        "val_hr_at_20",
        "val_ndcg_at_5",
        "val_ndcg_at_10",
        "val_ndcg_at_20",
    ]:
        assert key in epoch_keys
    assert ("checkpoint", 1, True) in recorder.events
    for key in ["best_epoch", "best_val_ndcg_at_10", "test_ndcg_at_10", "test_auc"]:
        assert key in summary
    # test metrics are those of the best epoch's weights, re-evaluated from its checkpoint
    reevaluated = evaluate_checkpoint(summary["best_checkpoint"], "test")
    assert reevaluated["test_ndcg_at_10"] == pytest.approx(summary["test_ndcg_at_10"], abs=1e-6)


def test_a_failing_run_reports_the_exception_and_keeps_its_checkpoint(make_trainer):
    recorder = Recorder(fail_at_epoch=1)
    trainer = make_trainer(["training.num_epochs=2"], callbacks=[recorder])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert recorder.events[-1] == ("exception", "boom")
    assert not any(e[0] == "end" for e in recorder.events)


def test_early_stopping_stops_when_the_monitor_stalls(make_trainer):
    # val_logloss falls as the model learns, so in "max" mode it never improves after epoch 1
    trainer = make_trainer(
        [
            "training.num_epochs=6",
            "training.monitor=val_logloss",
            "training.monitor_mode=max",
            "training.early_stopping_patience=1",
        ],
    )
    summary = trainer.fit()
    assert summary["stopped_early"] is True
    assert summary["best_epoch"] == 1
    assert summary["epochs_run"] == 2
    state = load_checkpoint(summary["best_checkpoint"])
    assert state["epoch"] == 1 and state["model_name"] == "deepfm"


@pytest.mark.parametrize(
    "overrides",
    [
        ["training.optimizer=adamw", "training.scheduler=step", "training.step_size=1"],
        ["training.optimizer=sgd", "training.scheduler=cosine", "training.learning_rate=0.3"],
        ["training.scheduler=plateau", "training.grad_clip_norm=1.0"],
        ["training.loss=bpr", "training.l2_embedding=1.0e-6"],
        ["training.loss=softmax", "training.ema_decay=0.999"],
    ],
    ids=["adamw-step", "sgd-cosine", "plateau-clip", "bpr-l2", "softmax-ema"],
)
def test_optimizers_schedulers_and_losses_train(make_trainer, overrides):
    trainer = make_trainer(["training.num_epochs=2", *overrides])
    summary = trainer.fit()
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in trainer.history)
    assert summary["best_val_auc"] > 0.55
    if "training.scheduler=step" in overrides:
        assert trainer.history[1]["lr"] == pytest.approx(trainer.history[0]["lr"] * 0.5)


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, batch):
        return self.logits.unsqueeze(-1)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_grouped_losses_match_hand_computed_values(make_trainer, loss):
    # 2 positives, then their 4 negatives each (the layout _grouped_batches yields)
    trainer = make_trainer([f"training.loss={loss}"])
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    trainer.model = _FixedLogits(torch.cat([pos, neg.reshape(-1)]))
    if loss == "bpr":
        per_group = [
            sum(math.log1p(math.exp(-(float(p) - float(n)))) for n in row) / 4
            for p, row in zip(pos, neg, strict=True)
        ]
    else:
        e = math.exp
        per_group = [-math.log(e(2) / (e(2) + 4)), -math.log(1 / (1 + e(1) + e(-1) + 2))]
    value = float(trainer._loss_grouped({}, loss))
    assert value == pytest.approx(sum(per_group) / 2, rel=1e-6)
    # recency weights weigh each group (a positive and its negatives) as a whole
    weighted = float(trainer._loss_grouped({}, loss, torch.tensor([1.5, 0.5])))
    assert weighted == pytest.approx((1.5 * per_group[0] + 0.5 * per_group[1]) / 2, rel=1e-6)


def test_weighted_bce_matches_hand_computed_value(make_trainer):
    trainer = make_trainer()
    trainer.model = _FixedLogits(torch.tensor([2.0, -1.0, 0.0]))
    labels = torch.tensor([1.0, 0.0, 0.0])
    per_row = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log(2.0)]
    value = float(trainer._loss_bce({}, labels, torch.tensor([2.0, 0.5, 0.5])))
    assert value == pytest.approx((2 * per_row[0] + 0.5 * per_row[1] + 0.5 * per_row[2]) / 3)
    assert float(trainer._loss_bce({}, labels)) == pytest.approx(sum(per_row) / 3)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_recency_weights_reach_the_loss(make_trainer, data, loss):
    """Equal weights (floor 1) train as unweighted; a short half-life changes the training."""
    base = ["training.num_epochs=1", f"training.loss={loss}"]
    plain = make_trainer([*base, "training.recency_half_life=null"], name="plain")
    assert plain.row_weights is None
    plain.fit()
    equal = make_trainer(
        [*base, "training.recency_half_life=5", "training.recency_floor=1.0"],
        name="equal",
    )
    assert torch.equal(equal.row_weights, torch.ones(len(data[1])))
    equal.fit()
    # same batches and the same updates; only the summation order of the loss differs
    assert _without_timings(equal.history) == [
        pytest.approx(h, rel=1e-6) for h in _without_timings(plain.history)
    ]
    recent = make_trainer([*base, "training.recency_half_life=5"], name="recent")
    train_ds = data[1]
    n, k = train_ds.num_positives, train_ds.num_negatives
    w = recent.row_weights
    assert w.shape == (n * (1 + k),)
    assert float(w[:n].mean()) == pytest.approx(1.0, rel=1e-5)
    # negative n + i*K + j weighs what positive i does; the last interactions weigh most
    assert torch.equal(w[n:].view(n, k), w[:n].unsqueeze(1).expand(n, k))
    last = torch.from_numpy(train_ds.recency_rank == 0)
    assert float(w[:n][last].min()) == pytest.approx(float(w.max()))
    recent.fit()
    assert recent.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_unknown_monitor_is_refused_when_the_trainer_is_built(make_trainer, tmp_path):
    recorder = Recorder()
    with pytest.raises(ConfigError, match="val_nope") as info:
        make_trainer(["training.monitor=val_nope"], callbacks=[recorder])
    # the message lists what the val evaluator produces; nothing has trained or been written
    assert "'val_ndcg_at_10'" in str(info.value) and "'val_logloss'" in str(info.value)
    assert "val_full" not in str(info.value)  # full ranking is off in these configs
    assert recorder.events == []
    assert not (tmp_path / "run").exists()
    # full-ranking metrics are valid monitors only when full ranking is on
    with pytest.raises(ConfigError, match="val_full_ndcg_at_10"):
        make_trainer(["training.monitor=val_full_ndcg_at_10"])
    make_trainer(["training.monitor=val_full_ndcg_at_10", "training.full_ranking=true"])


def test_the_monitor_check_knows_the_evaluator_keys(make_trainer):
    trainer = make_trainer(["training.full_ranking=true"])
    names = trainer.val_evaluator.metric_names()
    assert names == list(trainer.val_evaluator.evaluate(trainer.model))
    assert {"val_auc", "val_hr_at_5", "val_ndcg_at_20", "val_full_hr_at_10"} <= set(names)


def test_val_is_ranked_against_the_catalogue_once_for_the_best_weights(make_trainer):
    trainer = make_trainer(["training.full_ranking=true", "training.num_epochs=2"])
    summary = trainer.fit()
    # the epochs carry the sampled metrics only; the best one gets the full ranking at the end
    with_full = [h["epoch"] for h in trainer.history if "val_full_ndcg_at_10" in h]
    assert with_full == [summary["best_epoch"]]
    # ... and the best epoch's full-ranking numbers are those of the best weights
    expected = trainer.val_evaluator.evaluate(trainer.model)  # fit left the best weights
    assert summary["best_val_full_ndcg_at_10"] == expected["val_full_ndcg_at_10"]
    assert summary["best_val_full_hr_at_10"] == expected["val_full_hr_at_10"]
    assert summary["best_val_ndcg_at_10"] == expected["val_ndcg_at_10"]


@pytest.mark.parametrize(
    "overrides",
    [["training.full_ranking_every_epoch=true"], ["training.monitor=val_full_ndcg_at_10"]],
    ids=["asked", "monitored"],
)
def test_val_full_ranking_every_epoch_when_asked_or_monitored(make_trainer, overrides):
    trainer = make_trainer(["training.full_ranking=true", "training.num_epochs=1", *overrides])
    trainer.fit()
    assert "val_full_ndcg_at_10" in trainer.history[0]


def test_ctr_imports_and_trains_with_mlflow_unavailable(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["mlflow"] = None  # any `import mlflow` now raises ImportError
        import ctr, ctr.models, ctr.training, ctr.data
        from ctr.config import load_config
        from ctr.training import fit
        cfg = load_config({str(ROOT / "configs/deepfm_movielens.yaml")!r},
                          {FAST!r} + ["training.num_epochs=1"])
        result = fit(cfg, checkpoint_dir={str(tmp_path / "ckpt")!r})
        assert result.summary["test_auc"] > 0.5
        print("OK")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_import_ctr_does_not_import_mlflow():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ctr, ctr.models, ctr.training, ctr.data; print('mlflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_deepfm_two_epochs_learns_and_beats_popularity(tmp_path):
    config = load_config(
        ROOT / "configs/deepfm_movielens.yaml",
        ["training.num_epochs=2", "training.full_ranking=false"],
    )
    trainer, adapter = build_trainer(config, checkpoint_dir=tmp_path / "ckpt")
    trainer.fit()
    best = max(trainer.history, key=lambda h: h["val_ndcg_at_10"])
    popularity = RankingEvaluator(trainer.val_ds, full_ranking=False).evaluate(
        PopularityModel(adapter.item_popularity)
    )
    assert best["val_auc"] > 0.75
    assert best["val_ndcg_at_10"] > popularity["val_ndcg_at_10"]
