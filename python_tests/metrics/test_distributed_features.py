"""Feature extraction over 2 gloo ranks (as launched by torchrun) equals one process, in the same order."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np

from torchrun_launch import free_port

WORKER = pathlib.Path(__file__).with_name("dist_features_worker.py")
FRAMES, STRIDE, BATCH = 3, 2, 2


def _worker_module():
    spec = importlib.util.spec_from_file_location("dist_features_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_ranks(folder: pathlib.Path, out: pathlib.Path, world: int = 2) -> None:
    """Start `world` worker processes with the variables torchrun sets, and wait for all of them."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(folder), str(out), str(FRAMES), str(STRIDE),
                               str(BATCH)], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"


def test_two_ranks_gather_equals_one_process(tmp_path):
    from pvdm_fast.metrics.evaluate import fake_features

    rng = np.random.default_rng(0)
    folder = tmp_path / "samples"
    folder.mkdir()
    # 7 videos over 2 ranks: uneven shards (4 + 3), and a last batch smaller than the others on each rank.
    # Each video gets its own brightness, so its features differ from every other video's.
    for i in range(7):
        video = rng.integers(0, 256, (5, 10, 10, 3)) * (0.3 + 0.1 * i)
        np.savez(folder / f"video_{i:06d}.npz", video=video.clip(0, 255).astype(np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    _run_ranks(folder, out)

    extract = _worker_module().stand_in_extractor()
    single, _ = fake_features(folder, extract, num=None, frames=FRAMES, stride=STRIDE, batch_size=BATCH,
                              progress=False)
    one, _ = fake_features(folder, extract, num=1, frames=FRAMES, stride=STRIDE, batch_size=BATCH, progress=False)
    assert np.abs(single.features[:, None] - single.features[None]).sum(-1)[~np.eye(7, dtype=bool)].min() > 1e-3
    for rank in (0, 1):  # all_gather: rank 0 writes the result, but every rank holds the same statistics
        got = np.load(out / f"rank{rank}.npz")
        assert int(got["count"]) == 7 and int(got["one_count"]) == 1
        # Same videos through the same network; only thread counts and batch make-up differ (float32 sums).
        np.testing.assert_allclose(got["features"], single.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["one_features"], one.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["mean"], single.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["cov"], single.cov, rtol=1e-4, atol=1e-6)
