"""`ctr train --nproc N` (experiments/launch.py): the torchrun command it builds, the
arguments it passes on, and how it reads torchrun's report of a failed job. The
launches themselves run in tests/test_distributed.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from experiments.cli import main
from experiments.launch import describe_exit, root_cause, torchrun_command, train_arguments

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


def test_ctr_train_nproc_passes_the_same_arguments_on(monkeypatch):
    """What `ctr train --nproc 2` hands to the launcher (stood in for here; the slow
    tests in test_distributed.py launch for real): the user's arguments less --nproc,
    the overrides merged."""
    import experiments.launch

    launched = []
    monkeypatch.setattr(
        experiments.launch, "launch_training", lambda n, args, debug: launched.append((n, args))
    )
    argv = ["train", "--nproc", "2", "--model", "deepfm", "--epochs", "3", "--no-track"]
    result = CliRunner().invoke(main, [*argv, "--override", "seed=1"])
    assert result.exit_code == 0, result.output
    assert launched == [
        (
            2,
            [
                "--model",
                "deepfm",
                "--experiment-name",
                "movielens-100k",
                "--no-track",
                "--override",
                "seed=1",
                "training.num_epochs=3",
            ],
        )
    ]
    # a bad config is refused before any process starts
    typo = CliRunner().invoke(main, [*argv, "--override", "training.lerning_rate=1"])
    assert typo.exit_code == 1 and "training.lerning_rate" in typo.output
    assert len(launched) == 1
    assert train_arguments("c.yaml", "", [], "e", "r", True) == [
        "--config",
        "c.yaml",
        "--experiment-name",
        "e",
        "--run-name",
        "r",
    ]


def test_launch_command_runs_ctr_train_on_loopback():
    cmd = torchrun_command(2, ["--model", "deepfm", "--override", "seed=1"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "127.0.0.1:0"
    assert cmd[-7:] == ["-m", "ctr", "train", "--model", "deepfm", "--override", "seed=1"]
    with pytest.raises(ValueError, match="--nproc"):
        torchrun_command(0, [])
