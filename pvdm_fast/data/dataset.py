"""The clip dataset shared by every format, and `open_dataset(FORMAT:PATH, ...)`."""

from __future__ import annotations

import shlex
import warnings
from typing import Sequence

import torch

from pvdm_fast.data.clips import Clip, ClipConfig, ClipPlan
from pvdm_fast.data.formats import find_sources
from pvdm_fast.data.sources import Source, SourceError
from pvdm_fast.data.specs import DataSpec, parse_spec
from pvdm_fast.data.transforms import to_model_input

# A failing clip in training is replaced by the next items; this many in a row means the data is bad.
MAX_SUBSTITUTES = 16


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `config.length` frames as float32 (3, length, resolution, resolution) in [-1, 1].

    `dataset[i]` or `dataset[(i, epoch)]` (what `make_loader`'s sampler passes, so random starts
    depend on the epoch even in persistent workers) returns a dict:
      video (3, L, R, R) float32; index, video_index, start: int;
      cond_valid: bool, False when the first half of a conditional clip is padding;
      ok: bool, False only when `substitute` is off and the clip could not be read (video is zeros).
    A clip that cannot be read is warned about once per file and, when `substitute` (the default in
    training), replaced by the next readable item; `failures` maps path -> reason in this process.
    """

    def __init__(self, sources: Sequence[Source], config: ClipConfig, resolution: int, *, antialias: bool = True,
                 seed: int = 0, skipped: Sequence[dict] = (), name: str = "", substitute: bool | None = None):
        self.sources = list(sources)
        self.config = config
        self.resolution = resolution
        self.antialias = antialias
        self.seed = seed
        self.name = name
        self.plan = ClipPlan(config, [s.num_frames for s in self.sources])
        self.skipped = list(skipped) + [{"path": self.sources[v].path, "reason": r} for v, r in self.plan.skipped]
        self.substitute = config.mode == "train" if substitute is None else substitute
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_videos(self) -> int:
        """Videos with at least one clip."""
        return len(self.sources) - len(self.plan.skipped)

    def clip(self, index: int, epoch: int = 0) -> Clip:
        return self.plan.clip(index, self.seed, epoch)

    def read_clip(self, clip: Clip) -> torch.Tensor:
        """float32 (3, length, R, R); raises SourceError."""
        frames = self.sources[clip.video].read(clip.indices(self.config))
        video = to_model_input(frames, self.resolution, self.antialias)
        if clip.padded:
            pad = torch.full_like(video, -1.0)
            video = torch.cat([pad, video], dim=1)
        return video

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        tries = MAX_SUBSTITUTES if self.substitute else 1
        last_error = None
        for k in range(tries):
            item = (index + k) % len(self)
            clip = self.clip(item, epoch)
            try:
                video = self.read_clip(clip)
            except SourceError as exc:
                self._fail(exc)
                last_error = exc
                continue
            return {"video": video, "index": item, "video_index": clip.video, "start": clip.start,
                    "cond_valid": not clip.padded, "ok": True}
        if self.substitute:
            raise RuntimeError(f"{MAX_SUBSTITUTES} clips in a row from {self.name or 'the dataset'} could not be "
                               f"read (last: {last_error}); check the data with `pvdm data check`")
        size = (3, self.config.length, self.resolution, self.resolution)
        return {"video": torch.zeros(size), "index": index, "video_index": clip.video, "start": clip.start,
                "cond_valid": False, "ok": False}

    def _fail(self, exc: SourceError) -> None:
        if exc.path not in self.failures:
            self.failures[exc.path] = exc.reason
            warnings.warn(f"skipping unreadable video {exc.path}: {exc.reason}", RuntimeWarning, stacklevel=3)


def open_dataset(spec: str | DataSpec, *, resolution: int, frames: int, stride: int = 1, cond: bool = False,
                 mode: str = "train", clips_per_video: int = 1, offsets: Sequence[int] = (0,),
                 split: str | None = None, fold: int = 1, seed: int = 0, antialias: bool = True,
                 verify: bool = False, synthetic_frames: int | None = None,
                 substitute: bool | None = None, allow_empty: bool = False) -> ClipDataset:
    """A ClipDataset for `FORMAT:PATH` (see pvdm_fast.data.specs.LAYOUTS).

    split: ucf101 "all" (default, the convention for generation) / "train" / "test" with `fold`;
    sky "train" (default) / "test" (or "val"). verify: count packets of every video file to catch
    truncated files up front (slower start; `pvdm data check` does it). synthetic_frames: length of
    synthetic videos, default room for two consecutive clips (so the latent cache has pairs).
    Raises FileNotFoundError / ValueError naming the path and the expected layout when nothing
    usable is found (allow_empty: return a dataset without clips instead, once videos were found,
    so that its `skipped` list can be reported).
    """
    spec = parse_spec(spec)
    config = ClipConfig(frames, stride, cond, mode, clips_per_video, tuple(offsets))
    synthetic_frames = synthetic_frames or config.span(2 * config.length)
    sources, skipped = find_sources(spec, split=split, fold=fold, verify=verify, seed=seed,
                                    synthetic_frames=synthetic_frames, resolution=resolution)
    if not sources and not skipped:
        raise ValueError(f"no videos found in {spec.path}; expected {spec.layout}")
    dataset = ClipDataset(sources, config, resolution, antialias=antialias, seed=seed, skipped=skipped,
                          name=str(spec), substitute=substitute)
    check = check_command(spec, config, split, fold)
    if len(dataset) == 0 and not allow_empty:
        reasons = sorted({s["reason"].split(":")[0] for s in dataset.skipped})
        raise ValueError(f"no usable clips in {spec}: {len(sources) + len(skipped)} videos found, "
                         f"{len(dataset.skipped)} skipped ({'; '.join(reasons)}); "
                         f"run `{check}` for details")
    if dataset.skipped and len(dataset):
        short = len(dataset.plan.skipped)
        first = dataset.skipped[0]
        warnings.warn(f"{spec}: skipped {len(dataset.skipped)} videos ({len(dataset.skipped) - short} unreadable or "
                      f"missing, {short} too short; first: {first['path']}: {first['reason']}); "
                      f"`{check}` lists them", RuntimeWarning, stacklevel=2)
    return dataset


def check_command(spec: DataSpec, config: ClipConfig, split: str | None, fold: int) -> str:
    """The `pvdm data check` command line that lists what this dataset skipped, with its clip settings."""
    words = ["pvdm data check", shlex.quote(str(spec)), f"--frames {config.frames}"]
    words += [f"--stride {config.stride}"] if config.stride != 1 else []
    words += [f"--split {split}"] if split is not None else []
    words += [f"--fold {fold}"] if spec.format == "ucf101" and split not in (None, "all") and fold != 1 else []
    return " ".join(words)
