"""The loader factory: DDP shards, worker processes, determinism."""

import os
import signal
import subprocess
import sys
import time

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


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rpartition(")")[2].split()[:2]
    except OSError:
        return None
    return state, int(ppid)


def _running(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _proc_stat(int(name))):
            children.setdefault(stat[1], []).append(int(name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


# The main process (a `python -c`, so workers need not import a script) starts 2 forkserver workers,
# prints "ready" and hangs: in a training step (loader) or inside the encoder (encode).
_MAIN = {
    "loader": """
from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.loader import make_loader
ds = open_dataset("synthetic:6", resolution=8, frames=3, synthetic_frames=40)
it = iter(make_loader(ds, 2, num_workers=2, device="cpu", infinite=True))
next(it)
print("ready", flush=True)
time.sleep(300)
""",
    "encode": """
import torch
from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.latents import encode_dataset
class Hang(torch.nn.Module):
    def encode(self, video):
        print("ready", flush=True)
        time.sleep(300)
ds = open_dataset("synthetic:4", resolution=8, frames=3, mode="windows", clips_per_video=0, substitute=False)
encode_dataset(Hang(), ds, sys.argv[1], autoencoder_id="x", batch_size=1, num_workers=2, progress=False)
""",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("job, kill", [("loader", signal.SIGKILL), ("encode", signal.SIGTERM)])
def test_workers_exit_with_the_main_process_and_ignore_ctrl_c(tmp_path, job, kill):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    main = subprocess.Popen([sys.executable, "-c", "import sys, time\n" + _MAIN[job], str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, env=env, text=True)
    helpers: list[int] = []
    try:
        assert main.stdout.readline().strip() == "ready"
        helpers = _descendants(main.pid)  # forkserver, resource tracker and the workers
        workers = [p for p in helpers if _proc_stat(p)[1] != main.pid]
        assert len(workers) == 2
        for pid in workers:  # Ctrl-C in a terminal reaches every process of the group
            os.kill(pid, signal.SIGINT)
        time.sleep(1)
        assert all(_running(p) for p in workers), "a worker died of SIGINT"
        main.send_signal(kill)
        main.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_running(p) for p in helpers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in helpers if _running(p)]
        assert not left, f"processes {left} outlived the main process"
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        for pid in helpers:  # a failed run must not leave its orphans behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
