"""Process-group setup: torchrun environment -> DDP (NCCL on GPUs, gloo on CPU); else one process.

A plain `pvdm train-...` run is single-process with no launcher: every helper here then degrades to a
no-op, so trainers never branch on "distributed or not" beyond asking `ctx.world_size`.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """"auto" / None: this rank's GPU when CUDA is visible, else the CPU."""
    from pvdm_fast.devices import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def setup(device: str | None = None, timeout_minutes: float = 30.0) -> DistContext:
    """Join the torchrun process group if launched by torchrun (or reuse one already initialised,
    e.g. by a test harness); otherwise a single-process context."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, pick_device(device, local))
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(0, 1, 0, pick_device(device, int(os.environ.get("LOCAL_RANK", 0))))
    local = int(os.environ["LOCAL_RANK"])
    dev = pick_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                            **({"device_id": dev} if backend == "nccl" else {}))
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dev, initialised_here=True)


def teardown(ctx: DistContext) -> None:
    """Leave the process group. After a normal end (called from a `finally`, with no exception on its
    way) every rank first meets at a barrier, so none closes its connections while another still
    finishes its last collective: a 2-rank gloo run was seen to abort (SIGABRT, "terminate called
    without an active exception") at exit once in CI, and this race is the suspected cause. On an error, no
    barrier: the other ranks may be anywhere, and torchrun stops them."""
    if ctx.initialised_here and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_true(ctx: DistContext, flag: bool) -> bool:
    """Whether `flag` holds on every rank (so all ranks take the same branch, e.g. skipping a step)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=ctx.device)
    dist.all_reduce(t)
    return t.item() == 0.0


def mean_over_ranks(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    if not ctx.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / ctx.world_size


def gather_objects(ctx: DistContext, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects: RNG states)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj):
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers into `module` on every rank (in place; all ranks take part)."""
    if not ctx.distributed:
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def decided_by_rank0(rank: int, world: int, decide):
    """`decide()` run on rank 0 and its result given to every rank (one collective). An error there is
    raised on every rank instead of leaving the others waiting in a collective: on rank 0 as itself,
    elsewhere as a ValueError or FileNotFoundError with its message (so each rank's CLI exits 2 saying
    why), any other error as a RuntimeError naming it."""
    if world == 1:
        return decide()
    result = failure = error = None
    if rank == 0:
        try:
            result = decide()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
            kind = type(exc) if type(exc) in (ValueError, FileNotFoundError) else RuntimeError
            failure = (kind, f"{exc} (reported by rank 0)" if kind is not RuntimeError else f"rank 0 failed: {exc!r}")
    box = [(result, failure)]
    dist.broadcast_object_list(box, src=0)
    result, failure = box[0]
    if failure is not None:
        dist.barrier()  # every rank has the error before the first one exits
        if error is not None:
            raise error
        raise failure[0](failure[1])
    return result
