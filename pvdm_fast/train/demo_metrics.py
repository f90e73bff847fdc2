"""Cheap, fixed sanity metrics for the demo: PSNR and a Fréchet distance in a fixed feature space.

The feature map is not a learned network (none ships with the package): each clip is average-pooled
to a small spatio-temporal grid, its frame-to-frame differences likewise, and the concatenation is
projected by a fixed seeded Gaussian matrix. It cannot rank good generative models, but it separates
videos that look like the data from noise or from a broken sampler, which is what the demo checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of videos in [-1, 1] (peak-to-peak 2), over all elements."""
    mse = (a.double().clamp(-1, 1) - b.double().clamp(-1, 1)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(4.0 / mse)).item()


def clip_features(video: torch.Tensor, dims: int = 16, grid: int = 4, seed: int = 0) -> torch.Tensor:
    """(N, 3, T, H, W) in [-1, 1] -> (N, dims) float64."""
    v = video.double()
    frames = v.shape[2]
    pooled = F.adaptive_avg_pool3d(v, (min(frames, 4), grid, grid)).flatten(1)
    motion = F.adaptive_avg_pool3d((v[:, :, 1:] - v[:, :, :-1]).abs(), (1, grid, grid)).flatten(1) if frames > 1 \
        else torch.zeros(v.shape[0], 3 * grid * grid, dtype=v.dtype)
    x = torch.cat([pooled, 4.0 * motion], dim=1)
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(x.shape[1], dims, generator=g, dtype=torch.float64) / x.shape[1] ** 0.5
    return x @ proj


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """||mu_x - mu_y||^2 + tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2), float64."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    sx, sy = torch.cov(x.T), torch.cov(y.T)
    root = _sqrt_psd(sx)
    cross = torch.linalg.eigvalsh(root @ sy @ root).clamp(min=0).sqrt().sum()
    return float((mx - my).pow(2).sum() + sx.trace() + sy.trace() - 2 * cross)
