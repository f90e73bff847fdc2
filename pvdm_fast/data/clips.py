"""Which frames make a clip: length, stride, start positions, and the conditional (2T) variant.

A clip of T frames with stride s starting at frame a uses frames a, a+s, ..., a+(T-1)s, so it needs
(T-1)s+1 frames of the video. The conditional model trains on 2T-frame clips: the first T frames
condition the last T. As in the official code, a video long enough for T frames but not for 2T is
still used in the conditional case: its T frames become the last half and the first half is padding
(black, i.e. -1), flagged `padded` so the condition can be zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MODES = ("train", "eval", "windows")


@dataclass(frozen=True)
class ClipConfig:
    """frames: T. mode: "train" draws a random start per (epoch, item); "eval" uses `clips_per_video`
    fixed, evenly spaced distinct starts (the first at frame 0); "windows" tiles each video with consecutive
    T-frame windows starting at each of `offsets` (for the latent cache, where a window's condition
    is the window before it), at most `clips_per_video` per video when > 0."""

    frames: int
    stride: int = 1
    cond: bool = False
    mode: str = "train"
    clips_per_video: int = 1
    offsets: tuple[int, ...] = (0,)

    def __post_init__(self):
        if self.frames < 1 or self.stride < 1:
            raise ValueError(f"clip frames and stride must be >= 1, got frames={self.frames} stride={self.stride}")
        if self.clips_per_video < 0:
            raise ValueError(f"clips per video must be >= 0 (0: all, in windows mode), got {self.clips_per_video}")
        if self.mode not in MODES:
            raise ValueError(f"clip mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "eval" and self.clips_per_video < 1:
            raise ValueError(f"eval mode needs clips_per_video >= 1, got {self.clips_per_video}")
        if self.mode == "windows":
            if self.cond:
                raise ValueError("windows mode tiles T-frame clips; conditioning pairs come from neighbouring windows")
            bad = [o for o in self.offsets if not 0 <= o < self.hop]
            if not self.offsets or bad:
                raise ValueError(f"window offsets must lie in [0, frames*stride = {self.hop}), got {self.offsets}")

    @property
    def length(self) -> int:
        """Frames per returned clip: 2T for the conditional model."""
        return 2 * self.frames if self.cond else self.frames

    @property
    def hop(self) -> int:
        """Distance in video frames from one window to the next (and from a condition to its target)."""
        return self.frames * self.stride

    def span(self, frames: int) -> int:
        return (frames - 1) * self.stride + 1


@dataclass(frozen=True)
class Clip:
    video: int
    start: int
    padded: bool = False

    def indices(self, config: ClipConfig) -> list[int]:
        """Video frame indices to read: T of them when padded (the padding is not read), else length."""
        count = config.frames if self.padded else config.length
        return [self.start + k * config.stride for k in range(count)]


class ClipPlan:
    """The items of a dataset given each video's frame count; `skipped` lists (video, reason)."""

    def __init__(self, config: ClipConfig, lengths: Sequence[int]):
        self.config = config
        self.lengths = list(lengths)
        self.items: list[tuple[int, int]] = []  # (video, start); start -1 = drawn at random
        self.skipped: list[tuple[int, str]] = []
        self.padded: set[int] = set()
        for video, n in enumerate(self.lengths):
            reason = self._add(video, n)
            if reason:
                self.skipped.append((video, reason))

    def _add(self, video: int, n: int) -> str | None:
        c = self.config
        need = c.span(c.length)
        if n < need:
            if not (c.cond and n >= c.span(c.frames)):
                return f"too short: {n} frames, a clip of {c.length} frames with stride {c.stride} needs {need}"
            self.padded.add(video)
        free = n - c.span(c.frames if video in self.padded else c.length)
        if c.mode == "train":
            self.items.append((video, -1))
        elif c.mode == "eval":
            k = c.clips_per_video
            starts = sorted({round(i * free / (k - 1)) for i in range(k)}) if k > 1 else [0]
            self.items.extend((video, s) for s in starts)
        else:
            starts = sorted(s for o in c.offsets for s in range(o, free + 1, c.hop))
            if c.clips_per_video > 0:
                starts = starts[:c.clips_per_video]
            if not starts:
                return f"too short for offsets {c.offsets}: {n} frames"
            self.items.extend((video, s) for s in starts)
        return None

    def __len__(self) -> int:
        return len(self.items)

    def clip(self, item: int, seed: int = 0, epoch: int = 0) -> Clip:
        """The clip of `item`; a random start depends only on (seed, epoch, item), never on worker."""
        video, start = self.items[item]
        padded = video in self.padded
        if start < 0:
            c = self.config
            free = self.lengths[video] - c.span(c.frames if padded else c.length)
            start = int(np.random.default_rng([seed, epoch, item]).integers(0, free + 1))
        return Clip(video, start, padded)
