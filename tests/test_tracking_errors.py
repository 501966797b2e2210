"""experiments/tracking_errors.py without servers: the retry plan that bounds a
run's requests, CTR_TRACKING_TIMEOUT, the resume command and the failure's
wording. tests/test_faults_server.py runs them against real servers."""

from __future__ import annotations

import shlex

import pytest

from experiments.tracking_errors import (
    TIMEOUT_ENV,
    describe_failure,
    plan_retries,
    resume_command,
    tracking_timeout,
)


def test_the_retry_plan_fits_the_timeout_and_keeps_what_the_user_set():
    default = plan_retries(tracking_timeout({}), {})
    assert default.worst_case_seconds() <= 115  # a few seconds kept for recording the failure
    assert default.pause_seconds() >= 60  # a server back within a minute loses nothing
    short = plan_retries(20, {})
    assert short.worst_case_seconds() <= 20 and short.max_retries >= 1
    for timeout in (1, 3, 10, 45, 300, 3600):
        assert plan_retries(timeout, {}).worst_case_seconds() <= timeout
    user = plan_retries(120, {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"})
    assert user.request_timeout == 30 and user.worst_case_seconds() <= 120
    mine = plan_retries(120, {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"})
    assert mine.max_retries == 7  # kept, even where it cannot fit (a warning says so)


def test_a_bad_tracking_timeout_is_a_clear_error():
    from ctr.errors import CTRError

    assert tracking_timeout({TIMEOUT_ENV: "45"}) == 45.0
    for bad in ("soon", "0", "-5", "inf"):
        with pytest.raises(CTRError, match=f"expected {TIMEOUT_ENV} to be a number"):
            tracking_timeout({TIMEOUT_ENV: bad})


def test_the_resume_command_continues_the_same_run_from_the_last_checkpoint(tmp_path):
    run_id = "0" * 32
    overrides = ["seed=3", "training.resume_from=/old/last.pt", "training.num_epochs=9"]
    fresh = resume_command(run_id, tmp_path, None, "lr", overrides)
    assert fresh == f"MLFLOW_RUN_ID={run_id} ctr train --model lr --override seed=3 " + (
        "training.num_epochs=9"
    )  # no last.pt yet: the run's training starts again, in the same run
    (tmp_path / "last.pt").write_bytes(b"")
    command = resume_command(run_id, tmp_path, "configs/my run.yaml", None, overrides)
    assert shlex.split(command)[1:5] == ["ctr", "train", "--config", "configs/my run.yaml"]
    assert command.endswith(f"training.resume_from={tmp_path.resolve() / 'last.pt'}")


def test_failures_are_described_in_a_few_words():
    refused = RuntimeError(
        "API request to http://h:1/api/2.0/mlflow/runs/log-batch failed with exception "
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by "
        'NewConnectionError("...: [Errno 111] Connection refused"))'
    )
    assert describe_failure(refused) == "a request: connection refused (the server is down)"
    broken = RuntimeError(
        "API request to http://h:1/api/2.0/mlflow-artifacts/artifacts/1/x/best.pt failed "
        "with exception ... (Caused by ResponseError('too many 500 error responses'))"
    )
    assert describe_failure(broken).startswith(
        "storing an artifact: the server answered HTTP 500 to every retry"
    )
