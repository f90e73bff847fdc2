"""The loader factory: DDP shards, worker processes, determinism."""

import pytest
import torch

from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.loader import ShardedSampler, make_loader


def test_two_rank_shards_are_disjoint_and_complete():
    for size in (10, 11):  # even and odd sizes
        for epoch in (0, 1):
            shards = [[i for i, _ in ShardedSampler(size, r, 2, seed=3, epoch=epoch)] for r in (0, 1)]
            assert not set(shards[0]) & set(shards[1])
            assert sorted(shards[0] + shards[1]) == list(range(size))
            assert [len(ShardedSampler(size, r, 2)) for r in (0, 1)] == [len(s) for s in shards]
    orders = [[i for i, _ in ShardedSampler(10, seed=3, epoch=e)] for e in (0, 1)]
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(10))


def test_infinite_sampler_moves_through_epochs():
    it = iter(ShardedSampler(3, seed=0, infinite=True))
    pairs = [next(it) for _ in range(7)]
    assert [e for _, e in pairs] == [0, 0, 0, 1, 1, 1, 2]
    assert sorted(i for i, _ in pairs[3:6]) == [0, 1, 2]


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="empty"):
        ShardedSampler(0)
    with pytest.raises(ValueError, match="rank"):
        ShardedSampler(4, rank=2, world_size=2)


def batches(loader):
    return [(b["index"].tolist(), b["start"].tolist(), b["video"]) for b in loader]


def test_loader_with_two_workers_matches_in_process_and_is_seeded():
    ds = open_dataset("synthetic:6", resolution=8, frames=3, seed=0, synthetic_frames=40)
    main = batches(make_loader(ds, 2, seed=5, epoch=1, num_workers=0, device="cpu"))
    workers = make_loader(ds, 2, seed=5, epoch=1, num_workers=2, device="cpu")
    assert not workers.pin_memory
    parallel = batches(workers)
    assert [b[:2] for b in main] == [b[:2] for b in parallel]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(main, parallel))
    assert sorted(i for b in main for i in b[0]) == list(range(6))
    workers.sampler.set_epoch(2)  # persistent workers see the new epoch through the sampler
    assert [b[:2] for b in batches(workers)] != [b[:2] for b in main]


def test_loader_shards_by_rank():
    ds = open_dataset("synthetic:5", resolution=8, frames=2)
    seen = [i for r in (0, 1) for b in make_loader(ds, 2, rank=r, world_size=2, num_workers=0, device="cpu")
            for i in b["index"].tolist()]
    assert sorted(seen) == list(range(5))


def test_loader_shards_across_two_gloo_processes(tmp_path):
    import json

    from loader_rank_worker import rank_worker

    torch.multiprocessing.spawn(rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    shards = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(7))
