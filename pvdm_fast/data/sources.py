"""One video of a dataset: a file, a folder of frames or a synthetic video, read by frame indices.

Sources are small picklable records (paths and counts), so DataLoader workers receive the index
without re-scanning the disk.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pvdm_fast.data import frames as frame_io
from pvdm_fast.data import synthetic, video_io


class SourceError(RuntimeError):
    """A video that cannot be read; `reason` is user-facing."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class VideoFile:
    path: str
    num_frames: int

    def read(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return video_io.read_frames(self.path, indices)
        except video_io.VideoDecodeError as exc:
            raise SourceError(self.path, exc.reason) from None


@dataclass(frozen=True)
class FrameFolder:
    path: str
    names: tuple[str, ...]

    @property
    def num_frames(self) -> int:
        return len(self.names)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return frame_io.read_frame_files(self.path, self.names, indices)
        except frame_io.FrameReadError as exc:
            raise SourceError(exc.path, exc.reason) from None


@dataclass(frozen=True)
class SyntheticVideo:
    index: int
    seed: int
    num_frames: int
    size: int

    @property
    def path(self) -> str:
        return f"synthetic:{self.index}"

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return synthetic.render_frames(self.index, self.seed, indices, self.size, self.size)


Source = VideoFile | FrameFolder | SyntheticVideo


def probe_files(paths: Sequence[str], verify: bool = False,
                workers: int | None = None) -> tuple[list[VideoFile], list[dict]]:
    """VideoFile records for readable files and [{path, reason}] for the rest, in input order.

    Header probing is I/O bound, so a few threads hide the latency of cold disks and network mounts.
    """
    def probe(path: str) -> VideoFile | dict:
        try:
            return VideoFile(path, video_io.probe_video(path, verify=verify).num_frames)
        except video_io.VideoDecodeError as exc:
            return {"path": path, "reason": exc.reason}
        except OSError as exc:
            return {"path": path, "reason": f"unreadable ({exc})"}

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(probe, paths))
    good = [r for r in results if isinstance(r, VideoFile)]
    return good, [r for r in results if isinstance(r, dict)]
