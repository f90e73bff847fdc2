"""Frames at the I/O boundary -> model input: centre square crop, resize, [-1, 1], (3, T, H, W)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def center_square_crop(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, C) -> (T, S, S, C) with S = min(H, W), the official offsets ((long - short) // 2)."""
    height, width = frames.shape[1:3]
    size = min(height, width)
    top, left = (height - size) // 2, (width - size) // 2
    return frames[:, top:top + size, left:left + size]


def to_model_input(frames: np.ndarray | torch.Tensor, resolution: int, antialias: bool = True) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, resolution, resolution) in [-1, 1].

    Bilinear resize with half-pixel centres. antialias=False is what the official code does
    (plain bilinear, which aliases when shrinking, e.g. 320x240 -> 128); the default filters first.
    """
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(video.shape)}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    video = center_square_crop(video).permute(0, 3, 1, 2).float()  # (T, 3, S, S) in [0, 255]
    if video.shape[-1] != resolution:
        video = F.interpolate(video, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=antialias)
    return (video / 127.5 - 1.0).clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3): the inverse used for writing videos."""
    return ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()
