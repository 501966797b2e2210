"""Distributed data-parallel training: torchrun, gloo on CPU, rank 0 tracks.

The fast tests check the sharding arithmetic and the no-op helpers in this
process. The slow ones launch real torchrun jobs (`ctr train` as 1 and 2 ranks
on gloo) against the session's MLflow server, on a tiny DeepFM for 2 epochs:
one rank under torchrun equals plain training to the last digit, two ranks
land within noise of it with one MLflow run, a rank killed mid-epoch fails the
job and its run, and that run resumes to the uninterrupted two-rank numbers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ctr.config import ConfigError, load_config
from ctr.training import build_data, distributed
from ctr.training.batches import grouped_batches, row_batches
from tests.conftest import ROOT, VENV_BIN, subprocess_env


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread for this module's small tensors: on a busy machine OpenMP
    threads waiting for each other cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ sharding


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_a_batch_once_in_near_equal_parts(size):
    for n in range(0, 40):
        parts = [distributed.shard_of(n, r, size) for r in range(size)]
        if size > 1 and n < size:
            assert parts == [None] * size  # every rank skips the batch alike
            continue
        rows = [i for part, _ in parts for i in range(n)[part]]
        assert rows == list(range(n))  # contiguous, disjoint, in order, all of them
        lengths = [len(range(n)[part]) for part, _ in parts]
        assert max(lengths) - min(lengths) <= 1
        for (_, scale), length in zip(parts, lengths, strict=True):
            assert scale == pytest.approx(length * size / n if n else 1.0)


@pytest.mark.parametrize("size", [2, 3])
def test_scaled_rank_losses_average_to_the_whole_batch_gradient(size):
    """What DDP computes (the mean over ranks of each rank's scaled loss gradient)
    is the gradient of the whole batch's weighted mean loss."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    x, y, w = torch.randn(11, 5), torch.randint(0, 2, (11,)).float(), torch.rand(11) + 0.5

    def loss_of(rows: slice) -> torch.Tensor:
        per_row = F.binary_cross_entropy_with_logits(
            model(x[rows]).squeeze(-1), y[rows], reduction="none"
        )
        return (w[rows] * per_row).mean()  # as Trainer._loss_bce weighs rows

    whole = torch.autograd.grad(loss_of(slice(None)), list(model.parameters()))
    per_rank = []
    for r in range(size):
        part, scale = distributed.shard_of(len(x), r, size)
        per_rank.append(torch.autograd.grad(scale * loss_of(part), list(model.parameters())))
    averaged = [sum(grads) / size for grads in zip(*per_rank, strict=True)]
    for got, expected in zip(averaged, whole, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def train_ds():
    config = load_config(
        ROOT / "configs/deepfm_movielens.yaml",
        ["data.num_negatives=2", "training.full_ranking=false"],
    )
    return build_data(config).train_ds


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_ranks_split_every_batch_of_the_single_process_epoch(train_ds, monkeypatch, loss):
    """Two ranks' batches (rank and world size patched, in this process) hold exactly
    the rows, and weights, of the batches one process trains on; bpr keeps whole groups."""
    rows = train_ds.sample_epoch(1, seed=3)
    n = train_ds.num_positives
    positive_weights = torch.rand(n)
    row_weights = train_ds.row_weights(positive_weights)
    # one feature column that is a row's own position: the batches say which rows they hold
    rows.features["position"] = torch.arange(len(rows))

    def batches(rank: int, size: int):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: size)
        generator = torch.Generator().manual_seed(11)
        cpu = torch.device("cpu")
        if loss == "bce":
            return list(row_batches(rows, generator, 5000, row_weights, cpu))
        return list(grouped_batches(train_ds, rows, generator, 5000, positive_weights, cpu))

    single, rank0, rank1 = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(rank0) == len(rank1) == len(single)  # the same number of DDP steps
    k = train_ds.num_negatives
    for whole, part0, part1 in zip(single, rank0, rank1, strict=True):
        (batch, labels, weights, scale), parts = whole, (part0, part1)
        assert scale == 1.0
        if loss == "bce":
            joined = torch.cat([p[0]["position"] for p in parts])
            torch.testing.assert_close(joined, batch["position"])
            torch.testing.assert_close(torch.cat([p[2] for p in parts]), weights)
        else:  # each part: its positives first, then their negatives group by group
            for part_batch, _, part_weights, _ in parts:
                b = part_weights.shape[0]
                pos, neg = part_batch["position"][:b], part_batch["position"][b:].view(b, k)
                torch.testing.assert_close(neg, train_ds.group_rows(pos)[:, 1:])
                torch.testing.assert_close(part_weights, positive_weights[pos])
            b = weights.shape[0]
            joined = torch.cat([p[0]["position"][: p[2].shape[0]] for p in parts])
            torch.testing.assert_close(joined, batch["position"][:b])
        sizes = [p[1].shape[0] for p in parts]
        assert sum(sizes) == labels.shape[0]
        for size_, (_, _, _, part_scale) in zip(sizes, parts, strict=True):
            assert part_scale == pytest.approx(size_ * 2 / labels.shape[0])


def test_helpers_are_no_ops_without_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not distributed.launched_by_torchrun()
    assert distributed.launched_rank() == 0
    with distributed.process_group(torch.device("cpu")):
        assert not distributed.is_distributed()
        assert (distributed.rank(), distributed.world_size()) == (0, 1)
        assert distributed.shard(10) == (slice(0, 10), 1.0)
        value = {"val_auc": 0.5}
        assert distributed.broadcast_object(value) is value
        loss = torch.tensor(2.0)
        assert distributed.mean_over_ranks(loss) is loss
        assert distributed.wrap_model(torch.nn.Linear(2, 1), torch.device("cpu")) is None
        assert distributed.peer_failure(RuntimeError("boom")) is None
        distributed.fault_point()  # never fires outside a process group
        distributed.barrier()


def test_a_malformed_fault_spec_is_refused(monkeypatch):
    monkeypatch.setenv(distributed.FAULT_ENV, "rank1")
    with pytest.raises(ConfigError, match="RANK:STEP"):
        distributed._arm_fault()
    monkeypatch.delenv(distributed.FAULT_ENV)
    distributed._arm_fault()
    assert distributed._fault is None


# ------------------------------------------------------- real torchrun jobs
# A tiny DeepFM that learns in 2 epochs (val AUC ~0.81) at ~0.5 s an epoch on one
# thread: 48 batches of 4096 rows per epoch (1 negative per positive).
TINY = [
    "features.embedding_dim=4",
    "fm.embed_dim=4",
    "dnn.hidden_units=[16]",
    "data.num_negatives=1",
    "data.num_eval_negatives=99",
    "training.batch_size=4096",
    "training.learning_rate=1.0e-2",
    "training.num_epochs=2",
    "training.num_threads=1",
    "training.full_ranking=false",
    "training.test_full_ranking=false",
    "training.eval_batch_size=131072",
]
FAULT_STEP = 60  # the 12th batch of epoch 2
# per-run timings, and what only a resumed run logs, differ between equal runs
UNEQUAL = ("epoch_seconds", "eval_seconds", "seconds_per_epoch", "tracking_")


@dataclass
class Job:
    name: str  # also the MLflow experiment
    checkpoints: Path
    proc: subprocess.Popen
    log: Path
    seconds: float = 0.0

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(
    name: str,
    launcher: list[str],
    tmp: Path,
    uri: str,
    overrides: tuple[str, ...] = (),
    checkpoints: Path | None = None,
    **env: str,
) -> Job:
    (tmp / name).mkdir(parents=True)
    checkpoints = checkpoints or tmp / name / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    log = tmp / name / "output.log"
    cmd = [
        *launcher,
        "--model",
        "deepfm",
        "--experiment-name",
        name,
        "--override",
        *TINY,
        f"training.checkpoint_dir={checkpoints}",
        *overrides,
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=tmp / name,
            env=subprocess_env(uri, CTR_PROGRESS="0", **env),
        )
    return Job(name, checkpoints, proc, log)


def _wait(job: Job, t0: float, timeout: float = 300) -> Job:
    job.proc.wait(timeout=timeout)
    job.seconds = time.perf_counter() - t0
    return job


CTR = [str(VENV_BIN / "ctr"), "train"]
TORCHRUN_1 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc_per_node",
    "1",
    "--rdzv-backend",
    "c10d",
    "--rdzv-endpoint",
    "127.0.0.1:0",
    "-m",
    "ctr",
    "train",
]


@pytest.fixture(scope="module")
def jobs(mlflow_server, tmp_path_factory) -> dict[str, Job]:
    """Five training jobs at once on the session server, one experiment each: plain
    `ctr train`, torchrun with 1 rank, `ctr train --nproc 2`, and two --nproc 2 jobs
    whose rank 1 / rank 0 kills itself in epoch 2 (CTR_DIST_FAULT)."""
    tmp = tmp_path_factory.mktemp("distributed")
    uri = mlflow_server.uri
    t0 = time.perf_counter()
    started = [
        _start("plain", CTR, tmp, uri),
        _start("torchrun-1", TORCHRUN_1, tmp, uri),
        _start("nproc-2", [*CTR, "--nproc", "2"], tmp, uri),
        _start("rank1-dies", [*CTR, "--nproc", "2"], tmp, uri, CTR_DIST_FAULT=f"1:{FAULT_STEP}"),
        _start("rank0-dies", [*CTR, "--nproc", "2"], tmp, uri, CTR_DIST_FAULT=f"0:{FAULT_STEP}"),
    ]
    try:
        return {job.name: _wait(job, t0) for job in started}
    finally:
        for job in started:
            if job.proc.poll() is None:
                job.proc.kill()


def _only_run(client, job: Job):
    experiment = client.get_experiment_by_name(job.name)
    assert experiment is not None, job.output()[-3000:]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"{job.name}: expected one run, got {len(runs)}"
    return runs[0]


def _curve(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _comparable(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if not k.startswith(UNEQUAL)}


@pytest.mark.slow
def test_one_rank_under_torchrun_equals_plain_training(jobs, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    for name in ("plain", "torchrun-1"):
        assert jobs[name].proc.returncode == 0, jobs[name].output()[-5000:]
    plain, ranked = _only_run(client, jobs["plain"]), _only_run(client, jobs["torchrun-1"])
    assert plain.info.status == ranked.info.status == "FINISHED"
    assert ranked.data.tags["ctr.world_size"] == "1"
    assert _comparable(ranked) == _comparable(plain)  # every digit of every metric
    for key in ("train_loss", "val_ndcg_at_10", "val_auc"):
        assert _curve(client, ranked.info.run_id, key) == _curve(client, plain.info.run_id, key)


@pytest.mark.slow
def test_two_ranks_train_within_noise_of_one_into_one_run(jobs, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    job = jobs["nproc-2"]
    assert job.proc.returncode == 0, job.output()[-5000:]
    plain, run = _only_run(client, jobs["plain"]), _only_run(client, job)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ctr.world_size"] == "2"
    assert run.data.params["training.batch_size"] == "4096"  # the global batch
    for key in ("train_loss", "val_ndcg_at_10", "val_auc"):
        assert len(_curve(client, run.info.run_id, key)) == 2  # one point per epoch
    m, p = run.data.metrics, plain.data.metrics
    # the same steps on the same rows; only rounding and dropout masks differ
    assert abs(m["best_val_ndcg_at_10"] - p["best_val_ndcg_at_10"]) < 0.02
    assert abs(m["best_val_auc"] - p["best_val_auc"]) < 0.01
    assert abs(m["test_auc"] - p["test_auc"]) < 0.01
    train_loss = _curve(client, run.info.run_id, "train_loss")
    plain_loss = _curve(client, plain.info.run_id, "train_loss")
    assert train_loss == pytest.approx(plain_loss, abs=0.01)
    # rank 0 alone wrote checkpoints (under the run's id) and printed the summary
    assert [p.name for p in job.checkpoints.iterdir()] == [run.info.run_id]
    assert sorted(p.name for p in (job.checkpoints / run.info.run_id).iterdir()) == [
        "best.pt",
        "last.pt",
    ]
    assert job.output().count("deepfm: best epoch 2 of 2") == 1


@pytest.mark.slow
@pytest.mark.parametrize("dead", [1, 0])
def test_a_rank_killed_mid_epoch_fails_the_job_and_its_run(jobs, mlflow_server, dead):
    """Rank 1 dying: rank 0 names it and ends the run FAILED. Rank 0 dying: nobody
    is left to end the run, so the launcher marks it FAILED."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    job = jobs[f"rank{dead}-dies"]
    output = job.output()
    assert job.proc.returncode == 1, output[-5000:]
    assert f"rank {dead} failed first (signal SIGKILL)" in output
    run = _only_run(client, job)
    assert run.info.status == "FAILED"
    assert f"rank {dead}" in run.data.tags["error"]
    # epoch 1 was tracked and checkpointed; epoch 2 never finished
    assert len(_curve(client, run.info.run_id, "val_ndcg_at_10")) == 1
    assert (job.checkpoints / run.info.run_id / "last.pt").is_file()


@pytest.mark.slow
def test_a_failed_run_resumes_under_ddp_to_the_uninterrupted_numbers(jobs, mlflow_server, tmp_path):
    """Every rank loads the checkpoint; the run continues into the same MLflow run and
    ends as the uninterrupted two-rank run did, to the last digit."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    failed = _only_run(client, jobs["rank1-dies"])
    checkpoints = jobs["rank1-dies"].checkpoints  # the run's params name it: keep it
    resume = _start(
        "resumed",
        [*CTR, "--nproc", "2"],
        tmp_path,
        mlflow_server.uri,
        overrides=(f"training.resume_from={checkpoints / failed.info.run_id / 'last.pt'}",),
        checkpoints=checkpoints,
        MLFLOW_RUN_ID=failed.info.run_id,
    )
    resume = _wait(resume, time.perf_counter())
    assert resume.proc.returncode == 0, resume.output()[-5000:]
    run = client.get_run(failed.info.run_id)
    assert run.info.status == "FINISHED"
    uninterrupted = _only_run(client, jobs["nproc-2"])
    assert _comparable(run) == _comparable(uninterrupted)
    assert _curve(client, run.info.run_id, "val_ndcg_at_10") == _curve(
        client, uninterrupted.info.run_id, "val_ndcg_at_10"
    )
