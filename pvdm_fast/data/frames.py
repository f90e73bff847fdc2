"""Folders of frame images (PNG/JPEG) read with Pillow, in natural order (frame2 before frame10)."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: 'f2.png' < 'f10.png'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in _DIGITS.split(name) if part)


def natural_sorted(names) -> list[str]:
    return sorted(names, key=natural_key)


def is_hidden(name: str) -> bool:
    """Dotfiles and dot-folders: macOS AppleDouble `._frame1.png`, `.DS_Store`, `.thumbnails/`."""
    return name.startswith(".")


def is_image(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def list_frames(folder: str | os.PathLike) -> list[str]:
    """Image file names in `folder` (not recursive, hidden files left out), natural order."""
    with os.scandir(folder) as entries:
        return natural_sorted(e.name for e in entries if e.is_file() and is_image(e.name))


def list_subfolders(folder: str | os.PathLike) -> list[pathlib.Path]:
    folder = pathlib.Path(folder)
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_dir() and not is_hidden(e.name)]
    return [folder / name for name in natural_sorted(names)]


class FrameReadError(RuntimeError):
    """An image that Pillow cannot read; `reason` is user-facing."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3) RGB."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise FrameReadError(str(path), f"unreadable image ({type(exc).__name__}: {exc})") from None


def read_frame_files(folder: str | os.PathLike, names: Sequence[str], indices: Sequence[int]) -> np.ndarray:
    """uint8 (len(indices), H, W, 3): frames `names[i]` of `folder`, each file read once."""
    cache: dict[int, np.ndarray] = {}
    for i in indices:
        if i not in cache:
            cache[i] = read_image(os.path.join(folder, names[i]))
    shapes = {a.shape for a in cache.values()}
    if len(shapes) > 1:
        raise FrameReadError(str(folder), f"frames of different sizes {sorted(shapes)}")
    return np.stack([cache[i] for i in indices])
