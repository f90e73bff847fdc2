"""DataLoader factory: rank sharding for DDP, worker processes, pinned memory, seeded order.

The sampler yields (index, epoch) pairs and datasets draw their randomness from (seed, epoch, index),
so a batch is the same whatever the number of workers, and persistent workers see each new epoch.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import select
import signal
import threading
import time
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedSampler(Sampler):
    """Rank r takes positions r, r + W, r + 2W, ... of the epoch's order: the shards of one epoch are
    disjoint and together cover every index exactly once (sizes differ by at most one; use
    `infinite` for training so ranks never run out at different times)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, infinite: bool = False):
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed, self.epoch, self.infinite = shuffle, seed, epoch, infinite

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        while True:
            for i in self.order(epoch)[self.rank::self.world_size].tolist():
                yield i, epoch
            if not self.infinite:
                return
            epoch += 1

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def _main_process_alive(pid: int) -> bool:
    """False once `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return True  # no /proc: os.kill is all we have


def _wait_for_exit(pid: int) -> None:
    """Block until process `pid` exits: a pidfd turns readable then (Linux 5.3+), else poll."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        return
    while _main_process_alive(pid):
        time.sleep(0.5)


def watch_main_process(main_pid: int) -> None:
    """End this process as soon as the main process `main_pid` exits (a daemon thread waits for it)."""
    if os.getpid() == main_pid:
        return

    def watch():
        _wait_for_exit(main_pid)
        os._exit(1)

    threading.Thread(target=watch, name="pvdm-main-watch", daemon=True).start()


def _worker_init(_worker_id: int) -> None:
    # Each worker decodes one clip at a time; letting torch spawn a thread per core in every worker
    # oversubscribes the CPU.
    torch.set_num_threads(1)


if hasattr(multiprocessing.context, "ForkServerContext"):
    class WorkerProcess(multiprocessing.context.ForkServerProcess):
        """A forkserver process that ignores Ctrl-C and exits when the process that created it dies.

        Under forkserver a worker's parent is the server, not the main process, so torch's watchdog
        (it compares getppid() with the parent at start) never fires when the main process is killed;
        and the server never exits either, since every worker holds its "alive" pipe: workers, server
        and resource tracker lived on forever. Once the workers are gone the server and the tracker
        see EOF and exit. Ctrl-C reaches the whole process group; only the main process should handle
        it (it saves a checkpoint, then shuts the workers down, which needs them alive)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.main_pid = os.getpid()  # pickled with the process object into the child

        def run(self):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            watch_main_process(self.main_pid)
            super().run()

    class WorkerContext(multiprocessing.context.ForkServerContext):
        Process = WorkerProcess

    _WORKER_CONTEXT = WorkerContext()
else:  # Windows: spawned workers are children of the main process, which torch's watchdog covers
    _WORKER_CONTEXT = None


def worker_context():
    """forkserver where available: workers fork from a clean single-threaded server instead of this
    process, whose threads (tqdm's monitor, queue feeders, codec and OpenMP pools) may hold locks at
    fork time and hang a child (observed here; Python 3.12+ warns about exactly this). Its workers
    ignore SIGINT and exit when this process dies (see WorkerProcess)."""
    if _WORKER_CONTEXT is None or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    _WORKER_CONTEXT.set_forkserver_preload(["torch", "pvdm_fast.data"])  # each worker then starts in milliseconds
    return _WORKER_CONTEXT


def make_loader(dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, epoch: int = 0,
                rank: int | None = None, world_size: int | None = None, num_workers: int | None = None,
                device: str | torch.device | None = None, drop_last: bool = False,
                infinite: bool = False, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over this rank's shard. rank/world_size default to the process group (or 0/1).
    num_workers defaults to min(8, cores); memory is pinned when `device` (default: the current
    CUDA device if any) is a GPU. Call `loader.sampler.set_epoch(e)` between finite epochs."""
    if rank is None or world_size is None:
        rank, world_size = dist_rank_world()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler = ShardedSampler(len(dataset), rank, world_size, shuffle, seed, epoch, infinite)
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True, "worker_init_fn": _worker_init,
             "multiprocessing_context": worker_context()} if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.device(device).type == "cuda", drop_last=drop_last, **extra)
