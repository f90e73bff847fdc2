"""Generated videos from a sample folder, in batches of uint8 (B, T, H, W, 3).

A folder holds one entry per video: `NAME.npz` (uint8 (T, H, W, 3) under `video`, or its only
array), `NAME.mp4` (or .avi/.mkv/.webm/.mov/.gif, decoded with PyAV) or a folder `NAME/` of PNG/JPEG
frames: what `pvdm sample` writes. When one video exists in several formats (same NAME), the
lossless one is read (npz, then frames, then a compressed file). Names starting with '.' are
temporary files of an unfinished write and are ignored.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterator

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".gif")
_PRIORITY = {".npz": 0, "frames": 1, **{s: 2 + i for i, s in enumerate(VIDEO_SUFFIXES)}}


def list_samples(folder: str | os.PathLike) -> list[pathlib.Path]:
    """One path per video, sorted by name."""
    from pvdm_fast.data.frames import is_image, natural_key

    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"sample folder {root} does not exist; expected a folder of .npz / .mp4 files or "
                                "PNG frame folders (what `pvdm sample` writes)")
    best: dict[str, tuple[int, pathlib.Path]] = {}
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            kind = "frames" if any(is_image(n) for n in os.listdir(entry)) else None
            stem = entry.name
        else:
            kind = entry.suffix.lower() if entry.suffix.lower() in _PRIORITY else None
            stem = entry.stem
        if kind is not None and (stem not in best or _PRIORITY[kind] < best[stem][0]):
            best[stem] = (_PRIORITY[kind], entry)
    if not best:
        raise ValueError(f"no videos in {root}; expected .npz (uint8 (T, H, W, 3) under 'video'), video files "
                         f"({', '.join(VIDEO_SUFFIXES)}) or folders of PNG frames")
    return [best[s][1] for s in sorted(best, key=natural_key)]


def _read_npz(path: pathlib.Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        if "video" in z.files:
            return z["video"]
        if len(z.files) == 1:
            return z[z.files[0]]
        raise ValueError(f"{path} holds several arrays ({', '.join(z.files)}) and none is named 'video'")


def read_sample(path: str | os.PathLike, frames: int, stride: int = 1) -> np.ndarray:
    """uint8 (frames, H, W, 3): frames 0, stride, ..., (frames - 1) * stride of one video."""
    from pvdm_fast.data.frames import list_frames, read_frame_files
    from pvdm_fast.data.video_io import read_frames

    path = pathlib.Path(path)
    indices = list(range(0, (frames - 1) * stride + 1, stride))
    if path.is_dir():
        names = list_frames(path)
        if len(names) < indices[-1] + 1:
            raise ValueError(f"{path} has {len(names)} frames; {frames} frames at stride {stride} need "
                             f"{indices[-1] + 1}")
        video = read_frame_files(path, names, indices)
    elif path.suffix.lower() == ".npz":
        video = _read_npz(path)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
        if video.shape[0] < indices[-1] + 1:
            raise ValueError(f"{path} has {video.shape[0]} frames; {frames} frames at stride {stride} need "
                             f"{indices[-1] + 1}")
        video = video[indices]
    else:
        video = read_frames(path, indices)
    return np.ascontiguousarray(video)


def iter_sample_batches(folder: str | os.PathLike, batch_size: int, frames: int, stride: int = 1,
                        num: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[np.ndarray]:
    """Batches of uint8 (B, frames, H, W, 3) of the first `num` videos (all when None); with several
    ranks, rank r reads videos r, r + world, ... so that together they read each video once."""
    paths = list_samples(folder)
    if num is not None:
        if len(paths) < num:
            raise ValueError(f"{folder} holds {len(paths)} videos, fewer than the {num} requested")
        paths = paths[:num]
    mine = paths[rank::world_size]
    for start in range(0, len(mine), batch_size):
        videos = [read_sample(p, frames, stride) for p in mine[start:start + batch_size]]
        shapes = {v.shape for v in videos}
        if len(shapes) > 1:
            raise ValueError(f"videos in {folder} differ in size: {sorted(shapes)}")
        yield np.stack(videos)
