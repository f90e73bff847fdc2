"""Images written into run folders: video grids (PNG), animated GIFs and loss curves, with Pillow only."""

from __future__ import annotations

import math
import os
import pathlib
from typing import Sequence

import numpy as np
import torch


def _uint8(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3)."""
    v = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1).numpy()


def video_grid_frames(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Videos side by side: each tensor of `rows` is (B, 3, T, H, W); the result is uint8
    (T, rows * (H + pad), B * (W + pad), 3), one grid image per time step."""
    arrays = [_uint8(r) for r in rows]
    b, t, h, w, _ = arrays[0].shape
    out = np.full((t, len(arrays) * (h + pad), b * (w + pad), 3), 255, np.uint8)
    for i, a in enumerate(arrays):
        for j in range(a.shape[0]):
            out[:, i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = a[j, :t]
    return out


def save_video_grid(path: str | os.PathLike, rows: Sequence[torch.Tensor], max_frames: int = 8) -> pathlib.Path:
    """A PNG: one block row per tensor of `rows` (e.g. real, reconstruction); within it one row per
    video and frames left to right (at most `max_frames`, evenly spaced)."""
    from PIL import Image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [_uint8(r) for r in rows]
    b, t, h, w, _ = arrays[0].shape
    keep = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    lines = []
    for k in range(b):
        for a in arrays:
            lines.append(np.concatenate(list(a[k, keep]), axis=1))
        lines.append(np.full((2, len(keep) * w, 3), 255, np.uint8))
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)
    return path


def save_gif(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> pathlib.Path:
    """uint8 (T, H, W, 3) -> an endlessly looping GIF."""
    from PIL import Image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def save_curves(path: str | os.PathLike, curves: dict[str, Sequence[tuple[float, float]]],
                size: tuple[int, int] = (640, 360)) -> pathlib.Path:
    """Line plot of named (x, y) series, y on a log scale when every value is positive."""
    from PIL import Image, ImageDraw

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    series = {k: [(x, y) for x, y in v if math.isfinite(y)] for k, v in curves.items()}
    series = {k: v for k, v in series.items() if v}
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    left, right, top, bottom = 60, 20, 20, 40
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if series:
        xs = [x for v in series.values() for x, _ in v]
        ys = [y for v in series.values() for _, y in v]
        log = min(ys) > 0
        f = (lambda y: math.log10(y)) if log else (lambda y: y)
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = f(min(ys)), f(max(ys)) if f(max(ys)) > f(min(ys)) else f(min(ys)) + 1

        def px(x, y):
            return (left + (x - x0) / (x1 - x0) * (width - left - right),
                    height - bottom - (f(y) - y0) / (y1 - y0) * (height - top - bottom))

        for n, (name, pts) in enumerate(series.items()):
            colour = colours[n % len(colours)]
            draw.line([px(x, y) for x, y in pts] if len(pts) > 1 else [px(*pts[0])] * 2, fill=colour, width=2)
            draw.text((left + 8, top + 6 + 14 * n), name, fill=colour)
        draw.text((left, height - bottom + 6), f"{x0:g}", fill="black")
        draw.text((width - right - 60, height - bottom + 6), f"{x1:g} clips", fill="black")
        label = (lambda v: f"{10 ** v:.3g}") if log else (lambda v: f"{v:.3g}")
        draw.text((4, top), label(y1), fill="black")
        draw.text((4, height - bottom - 12), label(y0), fill="black")
    img.save(path)
    return path
