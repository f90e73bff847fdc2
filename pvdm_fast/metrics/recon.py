"""Reconstruction quality of the autoencoder: PSNR, SSIM and LPIPS on videos in [-1, 1].

Conventions (stated because papers differ): pixels are mapped to [0, 1]; PSNR is computed per video
from its MSE over all frames and channels, then averaged over videos; SSIM is Wang et al.'s, with an
11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1 and 'valid' filtering,
computed per frame and channel, averaged over pixels and channels of a frame, then over frames and
videos; LPIPS (VGG) is averaged over every frame of every video.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 5:
        raise ValueError(f"expected two videos (B, C, T, H, W) of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of videos in [-1, 1] on the [0, 1] scale; inf for identical videos."""
    _check(a, b)
    mse = ((a.double().clamp(-1, 1) - b.double().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """(B, T) SSIM per frame (mean over pixels and channels) of videos in [-1, 1]."""
    _check(a, b)
    bsz, c, t, h, w = a.shape
    if h < window or w < window:
        raise ValueError(f"SSIM with an {window}x{window} window needs frames of at least that size, got {h}x{w}")
    x = ((a.double().clamp(-1, 1) + 1) / 2).transpose(1, 2).reshape(bsz * t * c, 1, h, w)
    y = ((b.double().clamp(-1, 1) + 1) / 2).transpose(1, 2).reshape(bsz * t * c, 1, h, w)
    g = gaussian_window(window, sigma).to(x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable 'valid' Gaussian filter
        return F.conv2d(F.conv2d(z, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    c1, c2 = k1 ** 2, k2 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(bsz, t, c, -1).mean((2, 3))


@torch.no_grad()
def lpips_video(model, a: torch.Tensor, b: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """(B, T) LPIPS per frame of videos in [-1, 1]."""
    _check(a, b)
    bsz, c, t, h, w = a.shape
    fa = a.transpose(1, 2).reshape(bsz * t, c, h, w).float()
    fb = b.transpose(1, 2).reshape(bsz * t, c, h, w).float()
    out = torch.cat([model(fa[i:i + chunk], fb[i:i + chunk]).flatten() for i in range(0, fa.shape[0], chunk)])
    return out.double().reshape(bsz, t)


@torch.no_grad()
def evaluate_reconstruction(autoencoder, batches, lpips=None, device: str | torch.device = "cpu",
                            progress: bool = False) -> dict:
    """Mean PSNR / SSIM (/ LPIPS) of autoencoder(video) against video over batches (B, 3, T, H, W)."""
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    count, infinite = 0, 0
    for video in batches:
        video = video.to(device)
        recon = autoencoder(video).float().clamp(-1, 1)
        p = psnr(recon, video)
        infinite += int(torch.isinf(p).sum())
        sums["psnr"] += float(p[torch.isfinite(p)].sum())
        sums["ssim"] += float(ssim(recon, video).mean(1).sum())
        if lpips is not None:
            sums["lpips"] += float(lpips_video(lpips, recon, video).mean(1).sum())
        count += video.shape[0]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # torchrun: each rank scored its share of the videos; every rank gets the totals
        totals = torch.tensor([sums["psnr"], sums["ssim"], sums["lpips"], count, infinite], dtype=torch.float64,
                              device=device)
        torch.distributed.all_reduce(totals)
        sums["psnr"], sums["ssim"], sums["lpips"] = (float(v) for v in totals[:3])
        count, infinite = int(totals[3]), int(totals[4])
    if count == 0:
        raise ValueError("no videos to evaluate")
    finite = count - infinite
    result = {"psnr": sums["psnr"] / finite if finite else math.inf, "ssim": sums["ssim"] / count,
              "count": count}
    if infinite:
        result["psnr_exact_videos"] = infinite  # identical reconstructions: excluded from the PSNR mean
    if lpips is not None:
        result["lpips"] = sums["lpips"] / count
    return result
