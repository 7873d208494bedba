"""Data-parallel training under ``torchrun`` (torch.distributed + DistributedDataParallel).

``torchrun --nproc_per_node=N -m rnnlab train ...`` starts N processes with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`session` reads them, initialises the process group (gloo on CPU, NCCL on CUDA, each
rank on ``cuda:LOCAL_RANK``) and destroys it at the end, also on errors. Without them (or
with ``WORLD_SIZE=1``) it yields a one-process :class:`Dist` and nothing changes.

Sharding: every rank builds the same global batches as the one-process loader and keeps
its contiguous slice (:func:`shard_bounds`). With ``n`` the global batch size, ``n_r`` the
slice size and ``W`` the world size, each rank back-propagates
``loss_r * n_r * W / n`` (``loss_r`` the mean over its slice); DDP averages the gradients,
so the update uses

    (1/W) sum_r grad(loss_r n_r W / n) = grad((1/n) sum_i loss_i),

the one-process gradient of the mean loss over the global batch, for any split of the
batch (a short last batch, unequal slices, an empty slice).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from rnnlab.errors import DistributedError

T = TypeVar("T")

#: Environment variables torchrun sets; all of them are needed for a distributed launch.
ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``world_size == 1`` is a plain one-process run."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    #: The device collectives run on (CPU for gloo, this rank's GPU for NCCL).
    comm_device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks of a few float64 scalars (identity for one process)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu().tolist()]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small objects)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0, device=self.comm_device if self.backend == "nccl" else None)
        return box[0]

    def on_main(self, fn: Callable[[], T], *, share: bool = True) -> T | None:
        """Run ``fn`` on rank 0 only, then raise its exception on every rank, or return its result.

        The outcome is broadcast, so an error on rank 0 (an existing run directory, bad data...)
        stops all ranks with the same message instead of leaving them waiting. ``share=False``:
        the other ranks get None (the result is not sent).
        """
        if not self.enabled:
            return fn()
        result: Any = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                error = err
        outcome = self.broadcast(_portable(error) if error is not None else ("ok", result if share else None))
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise outcome[1]
        return result if self.is_main else outcome[1]


def _portable(err: BaseException) -> tuple[str, BaseException]:
    """``("error", err)`` when ``err`` survives pickling, else the same message as a RuntimeError."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return ("error", err)
    except Exception:  # noqa: BLE001
        return ("error", RuntimeError(f"{type(err).__name__}: {err}"))


def from_env(env: dict[str, str] | None = None) -> tuple[int, int, int, int] | None:
    """``(world_size, rank, local_rank, local_world_size)`` of a torchrun launch, or None.

    None when ``WORLD_SIZE`` is unset or 1. Raises :class:`DistributedError` when the
    environment is incomplete or inconsistent.
    """
    env = os.environ if env is None else env
    world = env.get("WORLD_SIZE")
    if world is None or world.strip() == "1":
        return None
    missing = [k for k in ENV_VARS if not env.get(k)]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world} asks for a distributed run, but {', '.join(missing)} "
            "is not set (launch with `torchrun --nproc_per_node=N -m rnnlab train ...`)"
        )
    try:
        world_size, rank, local_rank = int(world), int(env["RANK"]), int(env["LOCAL_RANK"])
        local_world = int(env.get("LOCAL_WORLD_SIZE") or world_size)
    except ValueError as err:
        raise DistributedError(
            f"distributed environment: expected integers in WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE; {err}"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < local_world:
        raise DistributedError(
            f"distributed environment: expected 0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < "
            f"LOCAL_WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}"
        )
    return world_size, rank, local_rank, local_world


@contextlib.contextmanager
def session(device: torch.device, *, timeout_s: float = 1800.0) -> Iterator[tuple[Dist, torch.device]]:
    """The job's :class:`Dist` and this rank's device, with the process group set up around the block.

    ``device``: the resolved training device. Distributed on CUDA: ``cuda:LOCAL_RANK`` and
    NCCL; on CPU: gloo (MPS is refused: torch.distributed has no MPS backend). A process group
    already initialised by the caller is used as it is and left alive.
    """
    env = from_env()
    if env is None:
        yield Dist(), device
        return
    world_size, rank, local_rank, local_world = env
    if not torch_dist.is_available():
        raise DistributedError("a distributed launch needs torch.distributed, which this torch build lacks")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise DistributedError(
            f"distributed training runs on CPU (gloo) or CUDA (NCCL); device {device} has "
            "no torch.distributed backend (set device=cpu)"
        )
    owned = not torch_dist.is_initialized()
    if owned:
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device
        torch_dist.init_process_group(backend, init_method="env://", world_size=world_size, rank=rank, **kwargs)
    else:
        backend = torch_dist.get_backend()
    dist = Dist(
        world_size, rank, local_rank, local_world, backend, device if backend == "nccl" else torch.device("cpu")
    )
    try:
        yield dist, device
    except BaseException:
        if owned and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
        raise
    if owned and torch_dist.is_initialized():
        # Every rank finishes its collectives before any rank closes its gloo connections. (The
        # occasional SIGABRT of a finished worker happens later, in C++ static destruction at
        # interpreter exit; rnnlab.cli.entry ends torchrun workers with os._exit for that.)
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous slice of ``n`` items.

    Slices differ in size by at most one, the larger ones first: ``n = 5, W = 2`` gives
    ``[0, 3)`` and ``[3, 5)``; ``n = 1, W = 2`` gives ``[0, 1)`` and an empty ``[1, 1)``.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batches(loader: Any, dist: Dist) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]]:
    """``(ids (m, L_r), lengths (m,), labels (m,), n_r, n)`` per global batch of ``loader``.

    ``n`` is the global batch size and ``n_r`` the size of this rank's slice; ``m = n_r``,
    except for an empty slice (a last batch with fewer examples than ranks): then ``m = 1``,
    the batch's last example as a stand-in that the caller weighs by ``n_r = 0`` (so that
    every rank still runs one forward and backward per batch, as DDP requires). ``L_r`` is
    the slice's longest length (padding beyond it is dropped: outputs at real steps do not
    depend on it). One process: the loader's batches as they are, ``n_r = n``.
    """
    for ids, lengths, labels in loader:
        n = labels.shape[0]
        if not dist.enabled:
            yield ids, lengths, labels, n, n
            continue
        start, stop = shard_bounds(n, dist.world_size, dist.rank)
        n_r = stop - start
        if n_r == 0:
            start, stop = n - 1, n
        lengths_r = lengths[start:stop]
        width = int(lengths_r.max())
        yield ids[start:stop, :width], lengths_r, labels[start:stop], n_r, n


def threads_per_rank(dist: Dist) -> int:
    """CPU threads for one rank when ``num_threads = 0``: the machine's cores shared by the local ranks."""
    return max(1, (os.cpu_count() or 1) // max(1, dist.local_world_size))
