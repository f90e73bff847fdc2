"""The training data stream: this rank's shard as an endless, resumable sequence of batches.

The position in the stream is a count of samples this rank has consumed, so a resumed run skips
straight to the next unseen batch (computed, not replayed: no clip is decoded twice).
"""

from __future__ import annotations

import os
import signal
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from pvdm_fast.data.loader import ShardedSampler


class ResumableSampler(ShardedSampler):
    """An infinite ShardedSampler that starts `skip` items into this rank's stream."""

    def __init__(self, size: int, rank: int, world_size: int, seed: int, skip: int = 0):
        super().__init__(size, rank, world_size, shuffle=True, seed=seed, epoch=0, infinite=True)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_epoch = len(self)
        epoch, offset = divmod(self.skip, per_epoch)
        while True:
            for i in self.order(epoch)[self.rank::self.world_size][offset:].tolist():
                yield i, epoch
            epoch, offset = epoch + 1, 0


def _worker_init(_worker_id: int) -> None:
    # Each worker decodes one clip at a time; a thread pool per worker would oversubscribe the cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the training process turns it into "save a checkpoint,
    # then exit". data.loader's worker context ignores SIGINT already (from an earlier point); again
    # here for any other context. SIGTERM is left alone: torch's loader shutdown, and
    # multiprocessing at exit, terminate a stuck worker with it, and ignoring it hung the exit. A
    # SIGTERM to the whole group (`kill -- -PGID`) ends the workers; the loop then saves anyway
    # (a loader error after a stop request is not fatal, Trainer._next_batches).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_stream(dataset, local_batch: int, *, rank: int, world_size: int, seed: int, skip: int,
                 num_workers: int, device: torch.device) -> Iterator[dict]:
    if num_workers < 0:
        num_workers = min(8, os.cpu_count() or 1)
    sampler = ResumableSampler(len(dataset), rank, world_size, seed, skip)
    from pvdm_fast.data.loader import worker_context

    # workers start from a clean forkserver: forking this (threaded) process can hang a worker
    extra = {"persistent_workers": True, "prefetch_factor": 2, "worker_init_fn": _worker_init,
             "multiprocessing_context": worker_context()} if num_workers else {}
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, **extra)
    return iter(loader)
