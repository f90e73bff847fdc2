"""One rank of the 2-process feature-extraction test (python_tests/metrics/test_distributed_features.py).

Run as a script with the environment torchrun gives a worker (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): it joins the group through the production `distributed.setup`, extracts
features of a sample folder through the production sharding + gather (`evaluate.fake_features`) and
saves what this rank ends up holding. The network is a tiny stand-in with fixed weights, because the
I3D at 224 x 224 would take minutes on a shared CPU; what is under test is the sharding and the gather.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def stand_in_extractor():
    """uint8 (B, T, H, W, 3) -> (B, 6) float features from a conv net whose weights depend on nothing but
    a fixed generator seed, so every process builds the same network."""
    gen = torch.Generator().manual_seed(1234)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 6)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    @torch.no_grad()
    def extract(videos: torch.Tensor) -> torch.Tensor:
        return net(videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1)

    return extract


def main(folder: str, out: str, frames: int, stride: int, batch_size: int) -> None:
    from pvdm_fast.metrics.evaluate import fake_features
    from pvdm_fast.train import distributed as D

    torch.set_num_threads(1)
    ctx = D.setup("cpu", timeout_minutes=1.0)  # a crashed peer fails the test in a minute, not 30
    try:
        assert ctx.world_size == 2, f"not joined to the process group: world size {ctx.world_size}"
        extract = stand_in_extractor()
        stats, _ = fake_features(folder, extract, num=None, frames=frames, stride=stride, batch_size=batch_size,
                                 progress=False)
        # Fewer videos than ranks: rank 1 reads nothing and must still take part in the gather.
        one, _ = fake_features(folder, extract, num=1, frames=frames, stride=stride, batch_size=batch_size,
                               progress=False)
        np.savez(f"{out}/rank{ctx.rank}.npz", features=stats.features, mean=stats.mean, cov=stats.cov,
                 count=stats.count, one_features=one.features, one_count=one.count)
    finally:
        D.teardown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
