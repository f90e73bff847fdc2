"""A procedural video set: coloured discs and squares moving and bouncing over a gradient background.

Every video is a pure function of (seed, index) and every frame a pure function of its time, so any
frame of any video can be rendered alone, at any size and for any length, with no files involved.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _scene(index: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, index, 0x5EED])
    count = int(rng.integers(1, 4))
    radius = rng.uniform(0.08, 0.2, count)
    speed = rng.uniform(0.01, 0.06, (count, 2)) * rng.choice([-1.0, 1.0], (count, 2))
    return {
        "background": rng.uniform(0, 255, (2, 3)),
        "square": rng.random(count) < 0.5,
        "colour": rng.uniform(0, 255, (count, 3)),
        "radius": radius,
        "start": rng.uniform(0, 1, (count, 2)) * (1 - 2 * radius[:, None]) + radius[:, None],
        "speed": speed,
    }


def _bounce(start: np.ndarray, speed: np.ndarray, radius: np.ndarray, t: float) -> np.ndarray:
    """Position at time t of a point moving at `speed` and reflecting off the walls of [r, 1 - r]."""
    room = (1 - 2 * radius)[:, None]
    u = np.mod(start - radius[:, None] + speed * t, 2 * room)
    return radius[:, None] + np.where(u <= room, u, 2 * room - u)


def render_frames(index: int, seed: int, times: Sequence[int], height: int, width: int) -> np.ndarray:
    """uint8 (len(times), height, width, 3) frames of synthetic video `index`."""
    scene = _scene(index, seed)
    y = (np.arange(height) + 0.5) / height
    x = (np.arange(width) + 0.5) / width
    bg0, bg1 = scene["background"]
    background = (bg0 * (1 - y)[:, None, None] + bg1 * y[:, None, None]) * np.ones((1, width, 1))
    out = np.empty((len(times), height, width, 3), np.uint8)
    for k, t in enumerate(times):
        frame = background.copy()
        centres = _bounce(scene["start"], scene["speed"], scene["radius"], float(t))
        for (cx, cy), r, square, colour in zip(centres, scene["radius"], scene["square"], scene["colour"]):
            dx, dy = np.abs(x - cx)[None, :], np.abs(y - cy)[:, None]
            inside = np.maximum(dx, dy) <= r if square else dx * dx + dy * dy <= r * r
            frame[inside] = colour
        out[k] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return out
