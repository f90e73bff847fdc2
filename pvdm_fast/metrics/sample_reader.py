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
import zipfile
import zlib
from typing import Iterator

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".gif")
REMEDY = "re-generate the video (or delete it) and run again"
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
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z.files
            key = "video" if "video" in names else names[0] if len(names) == 1 else None
            video = None if key is None else z[key]
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, TypeError) as exc:
        # TypeError: a bare .npy (an array, not an archive) under the .npz name
        raise ValueError(f"{path} is not a readable .npz video ({type(exc).__name__}: {exc}); {REMEDY}") from None
    if key is None:
        raise ValueError(f"{path} holds several arrays ({', '.join(names)}) and none is named 'video'")
    return video


def _too_short(path, have, frames: int, stride: int, need: int) -> ValueError:
    return ValueError(f"{path} has {have} frames; {frames} frames at stride {stride} need {need} (lower --frames "
                      f"or --stride, or {REMEDY})")


def read_sample(path: str | os.PathLike, frames: int, stride: int = 1) -> np.ndarray:
    """uint8 (frames, H, W, 3): frames 0, stride, ..., (frames - 1) * stride of one video.

    Every failure (unreadable or truncated file, too few frames, wrong array) is a ValueError naming
    the file and what to do."""
    from pvdm_fast.data.frames import FrameReadError, list_frames, read_frame_files
    from pvdm_fast.data.video_io import VideoDecodeError, read_frames

    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be positive, got frames={frames}, stride={stride}")
    path = pathlib.Path(path)
    indices = list(range(0, (frames - 1) * stride + 1, stride))
    need = indices[-1] + 1
    if path.is_dir():
        names = list_frames(path)
        if len(names) < need:
            raise _too_short(path, len(names), frames, stride, need)
        try:
            video = read_frame_files(path, names, indices)
        except FrameReadError as exc:
            raise ValueError(f"{exc}; {REMEDY}") from None
    elif path.suffix.lower() == ".npz":
        video = _read_npz(path)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
        if video.shape[0] < need:
            raise _too_short(path, video.shape[0], frames, stride, need)
        video = video[indices]
    else:
        try:
            video = read_frames(path, indices)
        except VideoDecodeError as exc:  # undecodable, or shorter than the clip (a truncated stream)
            raise ValueError(f"{path}: cannot read {frames} frames at stride {stride} (frames 0..{need - 1}): "
                             f"{exc.reason}; lower --frames or --stride if the videos are that short, else "
                             f"{REMEDY}") from None
    return np.ascontiguousarray(video)


def iter_sample_batches(folder: str | os.PathLike, batch_size: int, frames: int, stride: int = 1,
                        num: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[np.ndarray]:
    """Batches of uint8 (B, frames, H, W, 3) of the first `num` videos (all when None); with several
    ranks, rank r reads videos r, r + world, ... so that together they read each video once. Every
    video must have the size of the first."""
    if batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size}")
    paths = list_samples(folder)
    if num is not None:
        if len(paths) < num:
            raise ValueError(f"{folder} holds {len(paths)} videos, fewer than the {num} requested")
        paths = paths[:num]
    mine = paths[rank::world_size]
    size = None
    for start in range(0, len(mine), batch_size):
        batch = mine[start:start + batch_size]
        videos = [read_sample(p, frames, stride) for p in batch]
        for path, video in zip(batch, videos):
            size = size or (video.shape[1:3], path)
            if video.shape[1:3] != size[0]:
                raise ValueError(f"videos in {folder} differ in size: {path.name} is {_hw(video.shape[1:3])}, "
                                 f"{size[1].name} is {_hw(size[0])}; FVD / IS need one size")
        yield np.stack(videos)


def sample_size(folder: str | os.PathLike, frames: int, stride: int = 1) -> tuple[int, int]:
    """(height, width) of the first video of `folder`, read as a clip (so a short or unreadable first
    video fails here, before any feature is computed)."""
    return tuple(read_sample(list_samples(folder)[0], frames, stride).shape[1:3])


def _hw(size) -> str:
    return f"{size[0]}x{size[1]}"
