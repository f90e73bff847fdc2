"""Video files with PyAV: probing, frame-accurate decoding of only the frames a clip needs, mp4 writing.

Frames are addressed by index on the stream's timeline: index = round((pts - start) * time_base * rate)
with the stream's average frame rate. To read frames [a, b] we seek to the keyframe at or before a
and decode forward until b, so the cost is one GOP plus the clip, never the whole video. A timeline
index that has no frame of its own (AVI drop-frame packets) shows the previous frame, as a player does.
PyAV is imported inside the functions: importing pvdm_fast.data must not need it.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")


class VideoDecodeError(RuntimeError):
    """A file that cannot be probed or decoded; `reason` is a short, user-facing explanation."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (getattr(av, "FFmpegError", OSError), OSError, ValueError, EOFError)


def _describe(exc: BaseException) -> str:
    """FFmpeg's message without the path it repeats."""
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


def _count_packets(container, stream) -> int:
    """Frames by demuxing only (no decoding): every packet except the empty end-of-stream marker.
    A demuxer error part-way counts as the end of the file (that is what a truncated file looks like)."""
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0 or packet.pts is not None:
                count += 1
    except _av_errors():
        if count == 0:
            raise
    return count


def probe_video(path: str | os.PathLike, verify: bool = False) -> VideoInfo:
    """Frame count, rate and size from the container header.

    With `verify`, the packets are also counted (a cheap demux, no decoding), which catches files
    truncated after their header was written. Raises VideoDecodeError for unreadable, empty or
    truncated files.
    """
    import av

    path = str(path)
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise VideoDecodeError(path, "no frame rate in the header")
            header = int(stream.frames or 0)
            counted = _count_packets(container, stream) if verify or header == 0 else None
            width, height = stream.codec_context.width, stream.codec_context.height
    except _av_errors() as exc:
        raise VideoDecodeError(path, f"unreadable ({_describe(exc)})") from None
    if counted is not None and header and counted < header:
        raise VideoDecodeError(path, f"truncated: header says {header} frames, the file holds {counted}")
    frames = counted if header == 0 else header
    if not frames:
        raise VideoDecodeError(path, "no frames")
    if not width or not height:
        raise VideoDecodeError(path, "no frame size in the header")
    return VideoInfo(frames, float(rate), width, height)


class _Timeline:
    """Maps a stream's pts to frame indices and back."""

    def __init__(self, stream):
        self.time_base = stream.time_base or Fraction(1, 1)
        self.rate = stream.average_rate or stream.guessed_rate
        self.start = stream.start_time or 0

    def index(self, pts: int) -> int:
        return int(round((pts - self.start) * self.time_base * self.rate))

    def pts(self, index: int) -> int:
        return int(self.start + Fraction(index) / self.rate / self.time_base)


def _collect(frames: Iterable, wanted: Sequence[int], index_of, path: str) -> dict[int, np.ndarray]:
    """Decode forward through `frames` and pick the wanted indices (sorted, unique).

    Returns {} when the first frame is already past wanted[0] (the seek overshot) so the caller can
    fall back; raises VideoDecodeError when the stream ends before the last wanted frame.
    """
    out: dict[int, np.ndarray] = {}
    pending = list(wanted)
    prev = prev_index = None
    for frame in frames:
        k = index_of(frame)
        if prev is None and k > pending[0]:
            return {}
        # Wanted indices before k have no frame of their own: they show the previous frame.
        while pending and pending[0] < k:
            out[pending.pop(0)] = prev.to_ndarray(format="rgb24")
        if pending and pending[0] == k:
            out[pending.pop(0)] = frame.to_ndarray(format="rgb24")
        if not pending:
            return out
        prev, prev_index = frame, k
    raise VideoDecodeError(path, f"truncated: the stream ends after frame {prev_index}, "
                                 f"frame {pending[0]} was needed")


def read_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames at the given timeline indices (any order, repeats ok).

    Seeks to the keyframe before min(indices) and decodes forward to max(indices). Falls back to
    decoding from the start (still stopping at max(indices)) when the file has no usable index or
    no timestamps. Raises VideoDecodeError when the frames cannot be produced.
    """
    import av

    path = str(path)
    wanted = sorted(set(int(i) for i in indices))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"frame indices must be non-negative and non-empty, got {list(indices)[:8]}")
    try:
        got = _read_seeking(av, path, wanted)
        if not got:
            got = _read_sequential(av, path, wanted)
    except VideoDecodeError:
        raise
    except _av_errors() as exc:
        raise VideoDecodeError(path, f"decoding failed ({_describe(exc)})") from None
    return np.stack([got[int(i)] for i in indices])


def _read_seeking(av, path: str, wanted: list[int]) -> dict[int, np.ndarray]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        timeline = _Timeline(stream)
        if not timeline.rate:
            return {}
        if wanted[0] > 0:
            try:
                container.seek(timeline.pts(wanted[0]), backward=True, any_frame=False, stream=stream)
            except _av_errors():
                return {}
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None or first.pts is None:
            return {}

        def chained():
            yield first
            yield from frames

        def index_of(frame) -> int:
            if frame.pts is None:
                raise VideoDecodeError(path, "frame without a timestamp after seeking")
            return timeline.index(frame.pts)

        try:
            return _collect(chained(), wanted, index_of, path)
        except VideoDecodeError as exc:
            if "timestamp" in exc.reason:
                return {}
            raise


def _read_sequential(av, path: str, wanted: list[int]) -> dict[int, np.ndarray]:
    """Counts decoded frames from the start: for files without an index or timestamps."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        counter = iter(range(1 << 62))
        return _collect(container.decode(stream), wanted, lambda _frame: next(counter), path)


def read_all_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame, uint8 (N, H, W, 3). For tests and benchmarks; datasets never call this."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def write_video(path: str | os.PathLike, frames, fps: float = 8, codec: str | None = None,
                gop: int | None = None, options: dict[str, str] | None = None) -> None:
    """Write uint8 (T, H, W, 3) RGB frames (numpy or torch). Codec from the suffix unless given:
    .mp4/.mov/.mkv -> libx264 (yuv420p, needs even H and W), .avi -> mpeg4, .webm -> libvpx-vp9.
    `gop` sets the keyframe interval; `options` go to the encoder (e.g. {"crf": "18"}).
    """
    import av

    frames = np.asarray(frames.cpu() if hasattr(frames, "cpu") else frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video needs uint8 frames (T, H, W, 3) with T >= 1, got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    codec = codec or {".avi": "mpeg4", ".webm": "libvpx-vp9"}.get(suffix, "libx264")
    height, width = frames.shape[1:3]
    if codec in ("libx264", "mpeg4", "libvpx-vp9") and (height % 2 or width % 2):
        raise ValueError(f"{codec} stores yuv420p, which needs even height and width; got {height}x{width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec not in ("png", "ffv1", "rawvideo") else "rgb24"
        if gop:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = dict(options)
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
