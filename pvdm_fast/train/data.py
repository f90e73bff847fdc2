"""The training data stream: this rank's shard as an endless, resumable sequence of batches.

The position in the stream is a count of samples this rank has consumed, so a resumed run skips
straight to the next unseen batch (computed, not replayed: no clip is decoded twice).
"""

from __future__ import annotations

import os
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


def batch_stream(dataset, local_batch: int, *, rank: int, world_size: int, seed: int, skip: int,
                 num_workers: int, device: torch.device) -> Iterator[dict]:
    if len(dataset) < world_size:
        raise ValueError(f"the training data has {len(dataset)} item(s) (videos, for a latent cache), fewer than "
                         f"the {world_size} processes: each needs at least one; use fewer processes or more data")
    if num_workers < 0:
        num_workers = min(8, os.cpu_count() or 1)
    sampler = ResumableSampler(len(dataset), rank, world_size, seed, skip)
    # Workers use one thread each and ignore Ctrl-C (the training process turns it into "save, then
    # exit"; data.loader.WorkerProcess). SIGTERM stays fatal to them: torch's shutdown and
    # multiprocessing at exit end a stuck worker with it. After a group-wide SIGTERM the loop saves
    # anyway (Trainer._next_batches).
    from pvdm_fast.data.loader import _worker_init, worker_context

    # workers start from a clean forkserver: forking this (threaded) process can hang a worker
    extra = {"persistent_workers": True, "prefetch_factor": 2, "worker_init_fn": _worker_init,
             "multiprocessing_context": worker_context()} if num_workers else {}
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, **extra)
    return iter(loader)
