"""Clip decoding throughput: 16 x 256 x 256 clips from AVI files and PNG folders, 0 and 2 loader
workers, against decoding each whole video and cutting the clip out (what the official loader does).

The data is generated into a temporary folder (UCF-101-like 320x240 MPEG-4 AVI at 25 fps, and PNG
frame folders), so the numbers measure the decoder and the pipeline, not a particular disk.
Runs on CPU; no GPU needed.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _bench  # noqa: E402

from pvdm_fast.data.dataset import open_dataset  # noqa: E402
from pvdm_fast.data.loader import make_loader  # noqa: E402
from pvdm_fast.data.synthetic import render_frames  # noqa: E402
from pvdm_fast.data.transforms import to_model_input  # noqa: E402
from pvdm_fast.data.video_io import read_all_frames, write_video  # noqa: E402

HEIGHT, WIDTH, FPS = 240, 320, 25


def textured_frames(index: int, count: int) -> np.ndarray:
    """Moving shapes over a fixed grain texture, so the codec has real detail to decode."""
    frames = render_frames(index, 0, range(count), HEIGHT, WIDTH).astype(np.int16)
    grain = np.random.default_rng(index).normal(0, 12, (HEIGHT, WIDTH, 1)).astype(np.int16)
    return np.clip(frames + grain, 0, 255).astype(np.uint8)


def make_data(root: pathlib.Path, videos: int, video_frames: int, folders: int, folder_frames: int) -> None:
    from PIL import Image

    for i in range(videos):
        write_video(root / "avi" / f"v{i}.avi", textured_frames(i, video_frames), fps=FPS, gop=12,
                    options={"qscale": "4"})
    for i in range(folders):
        folder = root / "png" / f"video{i}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(textured_frames(100 + i, folder_frames)):
            Image.fromarray(frame).save(folder / f"{t:05d}.png", compress_level=1)


REPEATS = 3  # best of three passes: the machine may be shared, and noise only ever adds time


def time_loader(spec: str, clips: int, workers: int, resolution: int, frames: int) -> tuple[float, float]:
    """(wall, CPU of this process) seconds for `clips` clips, best pass. With workers the CPU time is
    spent in other processes, so only the wall time means anything there."""
    dataset = open_dataset(spec, resolution=resolution, frames=frames, seed=0)
    loader = make_loader(dataset, 1, num_workers=workers, device="cpu", infinite=True, seed=0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    best = (float("inf"), float("inf"))
    for _ in range(REPEATS):
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(clips):
            next(it)
        best = min(best, (time.perf_counter() - started, time.process_time() - cpu))
    return best


def time_whole_video(paths: list[pathlib.Path], clips: int, resolution: int, frames: int) -> tuple[float, float]:
    """(wall, CPU) seconds for `clips` clips, best pass, when every clip decodes its whole video first."""
    rng = np.random.default_rng(0)
    best = (float("inf"), float("inf"))
    for _ in range(REPEATS):
        started, cpu = time.perf_counter(), time.process_time()
        for k in range(clips):
            video = read_all_frames(paths[k % len(paths)])
            start = int(rng.integers(0, len(video) - frames + 1))
            to_model_input(video[start:start + frames], resolution)
        best = min(best, (time.perf_counter() - started, time.process_time() - cpu))
    return best


def rows(quick: bool = False) -> list[dict]:
    # 180 frames is about the mean length of a UCF-101 video (7 s at 25 fps).
    videos, video_frames, clips = (4, 100, 8) if quick else (8, 180, 32)
    resolution, frames = 256, 16
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        make_data(root, videos, video_frames, folders=2 if quick else 4, folder_frames=40 if quick else 64)

        def row(source: str, method: str, workers: int, seconds: tuple[float, float]) -> dict:
            wall, cpu = seconds
            return {"source": source, "method": method, "workers": workers, "clip": f"{frames}x{resolution}x{resolution}",
                    "clips": clips, "clips_per_s": round(clips / wall, 2), "ms_per_clip": round(1000 * wall / clips, 1),
                    "cpu_ms_per_clip": round(1000 * cpu / clips, 1) if workers == 0 else None}

        for workers in (0, 2):
            out.append(row("avi 320x240", "seek + clip frames", workers,
                           time_loader(f"videos:{root / 'avi'}", clips, workers, resolution, frames)))
        out.append(row("avi 320x240", "decode whole video", 0,
                       time_whole_video(sorted((root / "avi").glob("*.avi")), clips, resolution, frames)))
        for workers in (0, 2):
            out.append(row("png 320x240", "clip frames", workers,
                           time_loader(f"frames:{root / 'png'}", clips, workers, resolution, frames)))
    return out


if __name__ == "__main__":
    args = _bench.parser(__doc__.split("\n\n")[0]).parse_args()
    table = rows(args.quick)
    _bench.print_table(table)
    if args.json:
        _bench.write_json(args.json, table)
