"""`FORMAT:PATH` data specifications as given on the command line."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

# What each format expects on disk; quoted in every "not found" / "empty" error.
LAYOUTS: dict[str, str] = {
    "ucf101": "class folders of .avi files (PATH/<Class>/v_<Class>_gXX_cYY.avi), with optional split files "
              "ucfTrainTestlist/trainlist0N.txt and testlist0N.txt inside PATH or beside it",
    "sky": "PATH/train (or PATH/sky_train) and PATH/test (or PATH/val, PATH/sky_test), each holding one folder "
           "per video; a video folder holds clip folders of frames or the frames directly (*.png / *.jpg)",
    "videos": "any folder tree of video files (.avi, .mp4, .mkv, .webm, .mov)",
    "frames": "any folder tree whose leaf folders hold the frames of one video (*.png / *.jpg / *.jpeg)",
    "synthetic": "no files: `synthetic` or `synthetic:COUNT` (procedural moving shapes; COUNT videos, default 64)",
}
FORMATS = tuple(LAYOUTS)
DEFAULT_SYNTHETIC_COUNT = 64


@dataclass(frozen=True)
class DataSpec:
    """A parsed `FORMAT:PATH`. For `synthetic`, `path` is None and `count` the number of videos."""

    format: str
    path: pathlib.Path | None
    count: int = DEFAULT_SYNTHETIC_COUNT

    def __str__(self) -> str:
        return f"synthetic:{self.count}" if self.path is None else f"{self.format}:{self.path}"

    @property
    def layout(self) -> str:
        return LAYOUTS[self.format]


def parse_spec(text: str | DataSpec) -> DataSpec:
    """'ucf101:/data/UCF-101' -> DataSpec. Raises ValueError for an unknown format or a missing part."""
    if isinstance(text, DataSpec):
        return text
    fmt, sep, rest = str(text).partition(":")
    fmt = fmt.strip().lower()
    if fmt not in LAYOUTS:
        raise ValueError(f"unknown data format {fmt!r} in {text!r}; write FORMAT:PATH with FORMAT one of "
                         f"{', '.join(FORMATS)}")
    if fmt == "synthetic":
        if not rest:
            return DataSpec("synthetic", None)
        try:
            count = int(rest)
        except ValueError:
            raise ValueError(f"synthetic takes an optional video count (synthetic:COUNT), got {rest!r}") from None
        if count < 1:
            raise ValueError(f"synthetic:COUNT needs COUNT >= 1, got {count}")
        return DataSpec("synthetic", None, count)
    if not sep or not rest:
        raise ValueError(f"{fmt} needs a path: write {fmt}:PATH where PATH holds {LAYOUTS[fmt]}")
    return DataSpec(fmt, pathlib.Path(rest).expanduser())


def require_dir(path: pathlib.Path, spec: DataSpec) -> None:
    """FileNotFoundError naming the path and the layout `spec` expects, when `path` is not a folder."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{spec.format} data folder {path} {what}; expected {spec.layout}")
