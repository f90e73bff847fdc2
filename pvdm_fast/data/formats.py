"""Finding the videos of each on-disk format: lists of sources plus [{path, reason}] for skipped files."""

from __future__ import annotations

import os
import pathlib

from pvdm_fast.data import frames as frame_io
from pvdm_fast.data.sources import FrameFolder, Source, SyntheticVideo, probe_files
from pvdm_fast.data.specs import DataSpec, require_dir
from pvdm_fast.data.video_io import VIDEO_EXTENSIONS

SPLITS = {"ucf101": ("all", "train", "test"), "sky": ("train", "test")}
DEFAULT_SPLIT = {"ucf101": "all", "sky": "train"}
UCF_SPLIT_FOLDER = "ucfTrainTestlist"
# The official SkyTimelapse archive unpacks to sky_train/ and sky_test/; other copies use train/ and test/ or val/.
SKY_FOLDERS = {"train": ("train", "sky_train"), "test": ("test", "val", "sky_test")}


def _walk_files(root: pathlib.Path, suffixes: tuple[str, ...], skip_dirs: tuple[str, ...] = ()) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = _visible_dirs(dirs, skip_dirs)
        found += [os.path.join(folder, f) for f in frame_io.natural_sorted(files)
                  if f.lower().endswith(suffixes) and not frame_io.is_hidden(f)]
    return found


def _visible_dirs(dirs: list[str], skip_dirs: tuple[str, ...] = ()) -> list[str]:
    """Subfolders to descend into, in natural order: not hidden (.AppleDouble, .git), not skipped."""
    return frame_io.natural_sorted(d for d in dirs if d not in skip_dirs and not frame_io.is_hidden(d))


def frame_folders(root: pathlib.Path) -> tuple[list[FrameFolder], list[dict]]:
    """Every folder under `root` (itself included) that directly holds frame images."""
    found, skipped = [], []
    for folder, dirs, _files in os.walk(root):
        dirs[:] = _visible_dirs(dirs)
        try:
            names = frame_io.list_frames(folder)
        except OSError as exc:
            skipped.append({"path": folder, "reason": f"unreadable folder ({exc})"})
            continue
        if names:
            found.append(FrameFolder(folder, tuple(names)))
    return found, skipped


def _ucf_split_files(root: pathlib.Path, split: str, fold: int) -> pathlib.Path:
    name = f"{split}list{fold:02d}.txt"
    for candidate in (root / UCF_SPLIT_FOLDER, root.parent / UCF_SPLIT_FOLDER):
        if (candidate / name).is_file():
            return candidate / name
    raise FileNotFoundError(f"ucf101 split {split!r} needs {UCF_SPLIT_FOLDER}/{name} inside or beside {root}; "
                            "it is in the official UCF101TrainTestSplits archive (or use split 'all')")


def ucf101(spec: DataSpec, split: str, fold: int, verify: bool) -> tuple[list[Source], list[dict]]:
    root = spec.path
    require_dir(root, spec)
    if not 1 <= fold <= 3:
        raise ValueError(f"ucf101 fold must be 1, 2 or 3, got {fold}")
    paths = _walk_files(root, (".avi",), skip_dirs=(UCF_SPLIT_FOLDER,))
    skipped: list[dict] = []
    if split != "all":
        list_file = _ucf_split_files(root, split, fold)
        # Case-insensitive: the official lists spell some class names differently from the archive's
        # folders (HandStandPushups vs HandstandPushups).
        on_disk = {os.path.relpath(p, root).replace(os.sep, "/").lower(): p for p in paths}
        paths = []
        for line in list_file.read_text().splitlines():
            if not line.strip():
                continue
            rel = line.split()[0]
            if rel.lower() in on_disk:
                paths.append(on_disk[rel.lower()])
            else:
                skipped.append({"path": str(root / rel), "reason": f"listed in {list_file.name} but not found"})
    good, bad = probe_files(paths, verify=verify)
    return good, skipped + bad


def sky(spec: DataSpec, split: str, verify: bool) -> tuple[list[Source], list[dict]]:
    del verify  # frame folders are checked when read
    root = spec.path
    require_dir(root, spec)
    names = SKY_FOLDERS[split]
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"sky split {split!r} needs one of the folders {', '.join(names)} in {root}; "
                                f"expected {spec.layout}")
    return frame_folders(folder)


def videos(spec: DataSpec, verify: bool) -> tuple[list[Source], list[dict]]:
    require_dir(spec.path, spec)
    return probe_files(_walk_files(spec.path, VIDEO_EXTENSIONS), verify=verify)


def frames(spec: DataSpec) -> tuple[list[Source], list[dict]]:
    require_dir(spec.path, spec)
    return frame_folders(spec.path)


def synthetic(spec: DataSpec, seed: int, num_frames: int, size: int) -> tuple[list[Source], list[dict]]:
    return [SyntheticVideo(i, seed, num_frames, size) for i in range(spec.count)], []


def find_sources(spec: DataSpec, *, split: str | None, fold: int, verify: bool, seed: int,
                 synthetic_frames: int, resolution: int) -> tuple[list[Source], list[dict]]:
    """Dispatch on the format; `split` None means the format's default."""
    if split is not None and spec.format not in SPLITS:
        raise ValueError(f"{spec.format} data has no splits; leave the split unset (got {split!r})")
    if spec.format in SPLITS:
        split = split or DEFAULT_SPLIT[spec.format]
        if split == "val" and spec.format == "sky":
            split = "test"  # sky's test folder may be called val
        if split not in SPLITS[spec.format]:
            raise ValueError(f"{spec.format} split must be one of {SPLITS[spec.format]}, got {split!r}")
    if spec.format == "ucf101":
        return ucf101(spec, split, fold, verify)
    if spec.format == "sky":
        return sky(spec, split, verify)
    if spec.format == "videos":
        return videos(spec, verify)
    if spec.format == "frames":
        return frames(spec)
    return synthetic(spec, seed, synthetic_frames, resolution)
