"""Distributed data-parallel training: torchrun, gloo on CPU, rank 0 tracks.

The fast tests check the sharding arithmetic and the no-op helpers in this
process. The slow ones launch real torchrun jobs (`ctr train` as 1 and 2 ranks
on gloo) against the session's MLflow server, on a tiny DeepFM for 2 epochs:
one rank under torchrun equals plain training to the last digit, two ranks
land within noise of it with one MLflow run, a rank killed mid-epoch fails the
job and its run, and that run resumes to the uninterrupted two-rank numbers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctr.config import ConfigError, load_config
from ctr.training import build_data, distributed
from ctr.training.batches import grouped_batches, row_batches
from experiments.launch import describe_exit, root_cause, torchrun_command
from tests.conftest import ROOT

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


# ---------------------------------------------------------------- the launcher
TORCHRUN_REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
ctr FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-28_22:31:58
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 14314)
  error_file: <N/A>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_22:31:58
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 14315)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 14315
============================================================
"""


def test_torchrun_report_names_the_rank_that_failed_first():
    assert root_cause(TORCHRUN_REPORT) == (1, -9)
    assert root_cause("Traceback ...\nValueError: no report") is None
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(3) == "exit code 3"


def test_launch_command_runs_ctr_train_on_loopback():
    cmd = torchrun_command(2, ["--model", "deepfm", "--override", "seed=1"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "127.0.0.1:0"
    assert cmd[-7:] == ["-m", "ctr", "train", "--model", "deepfm", "--override", "seed=1"]
    with pytest.raises(ValueError, match="--nproc"):
        torchrun_command(0, [])
