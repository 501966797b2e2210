"""Distributed data-parallel training under torchrun (torch.distributed).

    torchrun --standalone --nproc_per_node 2 -m ctr train --model deepfm
    ctr train --nproc 2 --model deepfm       # the same; torchrun is started for you

One process per rank, each with the whole model and the whole data set:

- Every rank draws the epoch's rows itself (`sample_epoch(epoch, seed)` is
  deterministic: the same negatives a single process draws) and visits them in
  the same permutation. Each global batch of training.batch_size rows (or
  batch_size // (1 + K) groups for bpr / softmax) is cut into world_size
  contiguous parts, one per rank (`shard`). DistributedDataParallel averages
  the gradients; each rank's mean loss is scaled by its share of the batch, so
  the average is the gradient of the global batch's mean loss: a step is the
  step one process takes on the whole batch, up to rounding, dropout masks and
  batch-norm statistics (per rank). A last batch with fewer rows than ranks is
  skipped (at most world_size - 1 rows an epoch).
- Rank 0 alone evaluates, logs, calls the callbacks and writes checkpoints; the
  others wait in `broadcast_object` for its metrics and its early-stopping
  decision, so every rank takes the same decisions.

Without torchrun in the environment (RANK, WORLD_SIZE unset) every helper here
is a no-op: rank 0 of a world of one. Backends: gloo on CPU, NCCL on CUDA (one
GPU per local rank). One machine is what `ctr train --nproc` launches (loopback
only); `peer_failure` names a dead rank only among this machine's processes.

Fault injection, for tests: with CTR_DIST_FAULT=RANK:STEP in the environment of
a distributed run, that rank kills itself with SIGKILL before its STEP-th
training step (1-based, counted over the run), as a crash would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from ctr.config import ConfigError
from ctr.errors import CTRError
from ctr.utils import get_logger

logger = get_logger("ctr.distributed")

# How long a rank waits in a collective. Rank 0 may rank the whole catalogue
# (val at the end, test) while the others wait for its summary; a rank that dies
# is noticed at once all the same (its sockets close and torchrun stops the job).
COLLECTIVE_TIMEOUT = timedelta(hours=1)
FAULT_ENV = "CTR_DIST_FAULT"

# rank -> pid of the ranks on this machine, gathered when the group starts
_peer_pids: dict[int, int] = {}
_fault: tuple[int, int] | None = None  # (rank, step) of CTR_DIST_FAULT
_steps = 0  # training steps this process has begun (for CTR_DIST_FAULT)


class RankFailedError(CTRError, RuntimeError):
    """Another rank of a distributed run exited, so this one cannot go on; the
    message names the rank."""


# ------------------------------------------------------------------ who am I
def launched_by_torchrun() -> bool:
    """Whether torchrun (torch.distributed.run) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's rank as torchrun set it; 0 when not launched by torchrun.

    Known before the process group starts: `ctr train` reads it to leave the
    MLflow run to rank 0.
    """
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def is_distributed() -> bool:
    """Whether a process group is running (inside `process_group`)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the running group; 0 when there is none."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks in the running group; 1 when there is none."""
    return dist.get_world_size() if is_distributed() else 1


def local_device(device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU (cuda:LOCAL_RANK) under torchrun."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# ------------------------------------------------------------ the group itself
@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Within the block, this process is one rank of torchrun's job (gloo on CPU,
    NCCL on CUDA); a no-op outside torchrun or when a group is running already.

    Raises ConfigError for a device that cannot train distributed (MPS, or fewer
    GPUs than local ranks).
    """
    if not launched_by_torchrun() or is_distributed():
        yield
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} needs GPU cuda:{local_rank}, but this machine has "
                f"{torch.cuda.device_count()}; launch at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)  # NCCL's collectives and broadcast_object use it
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(
            f"distributed training runs on CPU (gloo) or CUDA (NCCL), got training.device "
            f"{device.type!r}; set training.device=cpu or cuda"
        )
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        _remember_peers()
        _arm_fault()
        if rank() == 0:
            logger.info("distributed training: %d ranks, backend %s", world_size(), backend)
        yield
    finally:
        _peer_pids.clear()
        dist.destroy_process_group()


def _remember_peers() -> None:
    """Record the pid of every rank on this machine (to name one that dies)."""
    everyone: list[tuple[str, int] | None] = [None] * world_size()
    dist.all_gather_object(everyone, (socket.gethostname(), os.getpid()))
    here = socket.gethostname()
    _peer_pids.clear()
    _peer_pids.update(
        {r: pid for r, (host, pid) in enumerate(everyone) if host == here and r != rank()}
    )


# ------------------------------------------------------------------ sharding
def shard(n: int) -> tuple[slice, float] | None:
    """This rank's part of a global batch of `n` items, and the scale of its loss
    (`shard_of` for this process's rank and world size).

    Example:
        part = shard(len(index))
        if part is not None:
            index, scale = index[part[0]], part[1]
    """
    return shard_of(n, rank(), world_size())


def shard_of(n: int, rank: int, size: int) -> tuple[slice, float] | None:
    """Part `rank` of `size` of a global batch of `n` items, and the scale of its loss.

    The batch is cut into `size` contiguous parts whose lengths differ by at most
    one. DistributedDataParallel averages the ranks' gradients; scaling rank r's
    mean loss by `len_r * size / n` makes that average
    (1 / size) * sum_r (len_r * size / n) * (S_r / len_r) = sum_r S_r / n,
    the gradient of the mean loss over all `n` items (S_r: the sum of rank r's losses).

    Returns:
        (slice of the batch, loss scale); (slice(0, n), 1.0) for a world of one;
        None when `n` < `size` (every rank skips the batch alike).

    Example:
        shard_of(5, rank=1, size=2)   # (slice(2, 5), 1.2): rows 2, 3, 4
    """
    if size == 1:
        return slice(0, n), 1.0
    if n < size:
        return None
    start, stop = rank * n // size, (rank + 1) * n // size
    return slice(start, stop), (stop - start) * size / n


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The DistributedDataParallel wrapper that trains `model` in the running group,
    or None when there is no group (train `model` itself).

    Buffers are not broadcast at each step: they are constant index tables, or
    batch-norm statistics that only rank 0's (evaluated, saved) copy uses.
    """
    if not is_distributed():
        return None
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # newer torch calls it forward_sync_buffers (and warns about broadcast_buffers)
    known = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False}
    )


# ------------------------------------------------------------- collectives
def broadcast_object(value):
    """Rank 0's `value` on every rank (any picklable value); the value itself when
    not distributed. The other ranks wait here until rank 0 sends it."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor (on the training device) over the ranks."""
    if not is_distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def barrier() -> None:
    """Wait until every rank gets here (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------- failures
def _alive(pid: int) -> bool:
    """Whether `pid` still exists (a zombie not yet reaped by torchrun counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone_peers(wait: float) -> list[str]:
    """The ranks on this machine whose process no longer exists, polled for up to
    `wait` seconds until one is gone."""
    deadline = time.monotonic() + wait
    while True:
        gone = [f"rank {r} (pid {p})" for r, p in sorted(_peer_pids.items()) if not _alive(p)]
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.05)


def peer_failure(exc: BaseException) -> RankFailedError | None:
    """`exc` explained as another rank's death (a RankFailedError naming it), or None.

    When a rank dies, torchrun reaps it and sends SIGTERM to the others, which
    `ctr train` turns into a KeyboardInterrupt; or a collective (the gradient
    all-reduce, a broadcast) fails first with a RuntimeError. A rank whose
    process is gone by then is the one that died: torchrun reaps a failed rank
    before it stops the rest, while a stop it was asked for (Ctrl-C, SIGTERM to
    torchrun) signals every rank and reaps them only afterwards. So an interrupt
    with every peer still there stays an interrupt, and a RuntimeError with no
    peer gone after a few seconds is this rank's own error.

    SIGTERM is ignored while this looks, and from then on when a rank did die:
    the job is stopping, and torchrun's SIGTERM must not cut short the recording
    of why (torchrun sends SIGKILL 30 s later in any case).
    """
    if not is_distributed() or world_size() < 2 or isinstance(exc, RankFailedError):
        return None
    if not isinstance(exc, KeyboardInterrupt | RuntimeError):
        return None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if in_main_thread else None
    # a failed collective comes before torchrun has reaped the dead rank: give it time
    gone = _gone_peers(wait=0.0 if isinstance(exc, KeyboardInterrupt) else 5.0)
    if not gone:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        return None
    if not isinstance(exc, KeyboardInterrupt):
        time.sleep(0.5)  # torchrun's SIGTERM follows the reaping at once: let it land ignored
    # the first line of what this rank saw, without gloo's [source file:line] prefix
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().split("\n")[0])[:160]
    seen = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return RankFailedError(
        f"distributed training stopped on rank {rank()} of {world_size()}: "
        f"{', '.join(gone)} exited ({seen}); torchrun's report gives "
        f"the exit code of the rank that failed first"
    )


def _arm_fault() -> None:
    """Read CTR_DIST_FAULT=RANK:STEP (see the module docstring)."""
    global _fault, _steps
    _fault, _steps = None, 0
    text = os.environ.get(FAULT_ENV, "").strip()
    if not text:
        return
    try:
        fault_rank, fault_step = (int(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(
            f"expected {FAULT_ENV}=RANK:STEP (e.g. 1:3), got {text!r}; unset it to train normally"
        ) from None
    _fault = (fault_rank, fault_step)


def fault_point() -> None:
    """Count a training step; die here if CTR_DIST_FAULT names this rank and step."""
    global _steps
    if _fault is None:
        return
    _steps += 1
    if _fault == (rank(), _steps) and is_distributed():
        logger.warning("%s: rank %d kills itself before step %d", FAULT_ENV, rank(), _steps)
        os.kill(os.getpid(), signal.SIGKILL)
