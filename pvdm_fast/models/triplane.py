"""The flat triplane latent and its three planes.

The official layout concatenates the planes along one token axis in the order
xy (h, w), yt (T, w), xt (T, h), each flattened row-major. Every size here comes
from the caller; nothing assumes 16 frames or square planes.
"""
from __future__ import annotations

import torch


def plane_shapes(frames: int, height: int, width: int) -> tuple[tuple[int, int], ...]:
    """(rows, cols) of the xy, yt and xt planes for a (T, h, w) token grid."""
    return ((height, width), (frames, width), (frames, height))


def plane_sizes(frames: int, height: int, width: int) -> list[int]:
    """Token counts [h*w, T*w, T*h] of the three planes (the GroupNorm segments)."""
    return [r * c for r, c in plane_shapes(frames, height, width)]


def latent_length(frames: int, height: int, width: int) -> int:
    return sum(plane_sizes(frames, height, width))


def split_planes(latent: torch.Tensor, frames: int, height: int, width: int) -> list[torch.Tensor]:
    """(B, C, h*w + T*w + T*h) -> [xy (B,C,h,w), yt (B,C,T,w), xt (B,C,T,h)] (views)."""
    if latent.dim() != 3:
        raise ValueError(f"expected a flat latent (B, C, L), got shape {tuple(latent.shape)}")
    sizes = plane_sizes(frames, height, width)
    if latent.shape[-1] != sum(sizes):
        raise ValueError(
            f"latent length {latent.shape[-1]} does not match the grid T={frames}, h={height}, "
            f"w={width} (expected h*w + T*w + T*h = {sum(sizes)})"
        )
    b, c = latent.shape[:2]
    parts = torch.split(latent, sizes, dim=-1)
    return [p.unflatten(-1, shape) for p, shape in zip(parts, plane_shapes(frames, height, width))]


def merge_planes(planes: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[xy (B,C,h,w), yt (B,C,T,w), xt (B,C,T,h)] -> (B, C, h*w + T*w + T*h)."""
    if len(planes) != 3:
        raise ValueError(f"expected three planes (xy, yt, xt), got {len(planes)}")
    xy, yt, xt = planes
    h, w = xy.shape[-2:]
    t = yt.shape[-2]
    if yt.shape[-1] != w or xt.shape[-2:] != (t, h):
        raise ValueError(
            f"inconsistent plane shapes xy {tuple(xy.shape)}, yt {tuple(yt.shape)}, xt {tuple(xt.shape)}"
        )
    return torch.cat([p.flatten(-2) for p in planes], dim=-1)
