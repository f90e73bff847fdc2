"""Tiny datasets written in tmp_path: videos whose frame index is coded in their colour."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from pvdm_fast.data.video_io import write_video

SIZE = (24, 32)  # (H, W): not square, so the centre crop matters


def frame_colour(i: int) -> np.ndarray:
    """A colour unique to frame i (i < 40): adjacent frames differ by >= 6 levels in every channel."""
    return np.array([5 + 6 * i, 250 - 6 * i, (37 * i) % 200 + 20], dtype=np.uint8)


def coded_frames(n: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """uint8 (n, H, W, 3): frame i filled with frame_colour(i)."""
    return np.stack([np.broadcast_to(frame_colour(i), (*size, 3)) for i in range(n)]).copy()


def frame_ids(frames: np.ndarray) -> list[int]:
    """The frame index each decoded frame's mean colour is closest to."""
    palette = np.stack([frame_colour(i) for i in range(40)]).astype(float)
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return [int(np.abs(palette - m).sum(axis=1).argmin()) for m in means]


def write_coded(path: pathlib.Path, n: int, gop: int = 8) -> pathlib.Path:
    options = {"crf": "12"} if path.suffix == ".mp4" else None
    write_video(path, coded_frames(n), fps=25, gop=gop, options=options)
    return path


def write_png_folder(folder: pathlib.Path, n: int, ext: str = "png") -> pathlib.Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(coded_frames(n)):
        Image.fromarray(frame).save(folder / f"frame{i}.{ext}")  # frame2 < frame10 only in natural order
    return folder


def truncate(path: pathlib.Path, fraction: float = 0.5) -> pathlib.Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.fixture
def ucf_tree(tmp_path):
    """UCF-like tree: 2 classes x 2 good videos (30 frames), a 5-frame video, a corrupt file, an empty
    file, a truncated file, and split files for fold 1."""
    root = tmp_path / "UCF-101"
    names = []
    for cls in ("ApplyLipstick", "Biking"):
        for g in (1, 2):
            rel = f"{cls}/v_{cls}_g0{g}_c01.avi"
            write_coded(root / rel, 30)
            names.append(rel)
    write_coded(root / "Biking/v_Biking_g03_c01.avi", 5)
    (root / "Biking/v_Biking_g04_c01.avi").write_bytes(b"RIFF not really a video" * 10)
    (root / "Biking/v_Biking_g05_c01.avi").write_bytes(b"")
    truncate(write_coded(root / "ApplyLipstick/v_ApplyLipstick_g03_c01.avi", 30), 0.9)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text(f"{names[0]} 1\n{names[2].upper()} 2\nBiking/v_Biking_g09_c01.avi 2\n")
    (lists / "testlist01.txt").write_text(f"{names[1]}\n{names[3]}\n")
    return root


@pytest.fixture
def sky_tree(tmp_path):
    """Sky-like tree: train/ with one video of two clip folders and one video holding frames directly;
    test/ with one video."""
    root = tmp_path / "sky"
    write_png_folder(root / "train/video_a/clip_1", 12)
    write_png_folder(root / "train/video_a/clip_2", 20)
    write_png_folder(root / "train/video_b", 16, ext="jpg")
    write_png_folder(root / "test/video_c/clip_1", 12)
    return root
