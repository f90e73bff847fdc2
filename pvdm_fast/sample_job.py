"""The `pvdm sample` job: batched, resumable sampling of many videos into one folder.

Video i is generated from seed `seed + i`, so it is the same whatever the batch size and whether or
not the run was interrupted. Each output is written to a temporary name and renamed into place, so
a file with its final name is always complete; on restart, videos whose every requested output
exists are kept and counted, not redone. `sample_settings.json` records what produced the folder,
and a restart with different settings is refused rather than mixing two sets.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Callable, Sequence

import numpy as np

from pvdm_fast._atomic import atomic_write, mkdtemp_beside

FORMATS = ("mp4", "gif", "png", "npz")
SETTINGS_FILE = "sample_settings.json"


def parse_formats(text: str) -> tuple[str, ...]:
    """'mp4,npz' -> ('mp4', 'npz'); unknown names are a ValueError."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [n for n in names if n not in FORMATS]
    if not names or bad:
        raise ValueError(f"--format takes a comma-separated list of {', '.join(FORMATS)}; got {text!r}")
    return names


def output_path(out: pathlib.Path, index: int, fmt: str) -> pathlib.Path:
    """mp4/gif/npz: a file per video; png: a folder of frame_0000.png ... per video."""
    stem = f"video_{index:06d}"
    return out / (stem if fmt == "png" else f"{stem}.{fmt}")


def is_done(out: pathlib.Path, index: int, formats: Sequence[str]) -> bool:
    return all(output_path(out, index, f).exists() for f in formats)


def _write_png_folder(path: pathlib.Path, video: np.ndarray) -> None:
    from PIL import Image

    tmp = mkdtemp_beside(path, prefix=f".{path.name}.")
    try:
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(tmp / f"frame_{t:04d}.png")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_gif(path: pathlib.Path, video: np.ndarray, fps: float) -> None:
    from PIL import Image

    frames = [Image.fromarray(f) for f in video]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                   duration=max(1, round(1000 / fps)), loop=0)


def _write_npz(path: pathlib.Path, video: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, video=video)  # lossless uint8 (T, H, W, 3): the metrics' input format


def write_video_outputs(out: pathlib.Path, index: int, video: np.ndarray, formats: Sequence[str],
                        fps: float) -> None:
    """Write one video (uint8 (T, H, W, 3)) in every requested format, each atomically."""
    from pvdm_fast.data.video_io import write_video

    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a uint8 video (T, H, W, 3), got {video.dtype} {video.shape}")
    for fmt in formats:
        path = output_path(out, index, fmt)
        if fmt == "png":
            _write_png_folder(path, video)
        elif fmt == "mp4":
            atomic_write(path, lambda p: write_video(p, video, fps=fps), keep_suffix=True)  # container from suffix
        elif fmt == "gif":
            atomic_write(path, lambda p: _write_gif(p, video, fps), keep_suffix=True)
        else:
            atomic_write(path, lambda p: _write_npz(p, video), keep_suffix=True)


def model_identity(files: Sequence[str | os.PathLike], extra: str = "") -> str:
    """Content digests of the weight files (+ `extra`, e.g. the preset): a moved or renamed checkpoint
    is the same model, retrained weights under the same name are not."""
    import hashlib

    parts = []
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        parts.append(digest.hexdigest()[:16])
    return "|".join(parts + ([extra] if extra else []))


def holds_videos(out: pathlib.Path) -> bool:
    """Whether any finished output (of any format) is in the folder; temporary files start with '.'."""
    return any(out.glob("video_*"))


# Recorded since the settings are resolved (defaults filled in); a file without them is older.
RESOLVED_KEYS = ("precision", "device", "fps")


def _upgrade(old: dict, settings: dict, defaults: dict) -> dict:
    """An older settings file as it would read now: None (a default) replaced by `defaults`' value, the
    keys it did not record taken as they are now (that version could not tell them apart)."""
    if any(k in old for k in RESOLVED_KEYS):
        return old
    up = {k: (defaults[k] if v is None and k in defaults else v) for k, v in old.items()}
    return {**{k: settings.get(k) for k in RESOLVED_KEYS}, **up}


def check_settings(out: pathlib.Path, settings: dict, defaults: dict | None = None) -> None:
    """Record the settings in a new folder; refuse to resume a folder made with other settings.

    A folder with settings but no video yet (a first run that failed or was stopped before its first
    video) takes the new settings: nothing would be mixed. `defaults`: what None meant in a file
    written before settings were recorded resolved (steps, eta, guidance), so such folders resume."""
    path = out / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # compare what the file would hold (tuples -> lists, ...)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None  # a damaged settings file: refuse below unless nothing is sampled yet
        if isinstance(old, dict):
            old = _upgrade(old, settings, defaults or {})
        if old == settings:
            if json.loads(path.read_text()) != settings:  # rewrite an older file in today's form
                atomic_write(path, lambda p: p.write_text(json.dumps(settings, indent=1, sort_keys=True)))
            return
        if holds_videos(out):
            if old is None:
                raise ValueError(f"{path} is damaged, so the videos in {out} cannot be matched to these "
                                 "settings; use a new --out folder")
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{out} holds videos sampled with other settings ({', '.join(diff)} differ: "
                             f"{ {k: old.get(k) for k in diff} } there, { {k: settings.get(k) for k in diff} } "
                             "now); use a new --out folder to sample a different set")
    atomic_write(path, lambda p: p.write_text(json.dumps(settings, indent=1, sort_keys=True)))


def run_sample_job(generate: Callable[[list[int]], np.ndarray], out: str | os.PathLike, num: int,
                   batch_size: int, seed: int, formats: Sequence[str], fps: float = 16.0,
                   settings: dict | None = None, progress: bool = True, defaults: dict | None = None,
                   ctx=None) -> dict:
    """Sample videos 0..num-1 into `out`, skipping finished ones.

    generate(seeds) -> uint8 (len(seeds), T, H, W, 3). Returns {"existing", "generated", "total"}.
    `ctx`: a `pvdm_fast.train.distributed.DistContext` when several processes (torchrun) share the
    folder: rank 0 checks and records the settings and lists the missing videos, and rank r makes
    every world_size-th of them (videos do not depend on who makes them: video i is seed + i).
    `generated` then counts the videos of every rank; `batch_size` is per process.
    """
    from pvdm_fast.train import distributed as D

    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch-size must be positive, got {num} and {batch_size}")
    if fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    ctx = ctx if ctx is not None else D.DistContext(0, 1, 0, None)
    out = pathlib.Path(out)

    def missing() -> list[int]:
        out.mkdir(parents=True, exist_ok=True)
        check_settings(out, {**(settings or {}), "seed": seed, "fps": fps}, defaults)
        return [i for i in range(num) if not is_done(out, i, formats)]

    # Rank 0's verdict on every rank: a refused folder stops all of them (no rank left waiting).
    todo = D.decided_by_rank0(ctx.rank, ctx.world_size, missing)
    existing = num - len(todo)
    mine = todo[ctx.rank::ctx.world_size]
    from tqdm.auto import tqdm

    if ctx.distributed:
        bar = tqdm(total=len(mine), unit="video", desc=f"sampling (rank 0 of {ctx.world_size}, "
                   f"{existing} of {num} already there)", disable=not (progress and ctx.is_main))
    else:
        bar = tqdm(total=num, initial=existing, unit="video", desc="sampling", disable=not progress)
    for start in range(0, len(mine), batch_size):
        indices = mine[start:start + batch_size]
        videos = generate([seed + i for i in indices])
        for index, video in zip(indices, videos):
            write_video_outputs(out, index, np.asarray(video), formats, fps)
        bar.update(len(indices))
    bar.close()
    generated = sum(D.gather_objects(ctx, len(mine)))  # with several ranks, also waits for all of them
    return {"existing": existing, "generated": generated, "total": num}


def resolve_sampler(protocol: str | None, sampler: str | None, steps: int | None,
                    eta: float | None) -> tuple[str, int | None, float | None]:
    """Apply `--protocol official` (DDIM, 400 steps, eta 1); explicit flags may not contradict it."""
    from pvdm_fast.diffusion.samplers import OFFICIAL_PRESET

    if protocol is None:
        return sampler or "ddim", steps, eta
    if protocol != "official":
        raise ValueError(f"unknown --protocol {protocol!r}; the only preset is 'official'")
    given = {"sampler": sampler, "steps": steps, "eta": eta}
    clash = {k: v for k, v in given.items() if v is not None and v != OFFICIAL_PRESET[k]}
    if clash:
        raise ValueError(f"--protocol official means {OFFICIAL_PRESET}; drop the contradicting "
                         f"{', '.join(f'--{k} {v}' for k, v in clash.items())}")
    return OFFICIAL_PRESET["sampler"], OFFICIAL_PRESET["steps"], OFFICIAL_PRESET["eta"]


def sample_to_folder(pipe, out: str | os.PathLike, *, num: int, batch_size: int, seed: int,
                     formats: Sequence[str], fps: float = 16.0, frames: int | None = None,
                     sampler: str = "ddim", steps: int | None = None, eta: float | None = None,
                     guidance: float | None = None, condition: str = "reencode", clip_x0: bool = True,
                     model_id: str = "", progress: bool = True, ctx=None,
                     context: Callable[[list[int]], "torch.Tensor"] | None = None, context_settings: dict | None = None,
                     with_context: bool = False) -> dict:
    """`run_sample_job` with a Pipeline; the settings that change the videos guard the folder.

    `context(indices)` -> the videos to continue (see Pipeline.__call__), one per video index;
    `context_settings` says where they come from (recorded with the settings); `with_context` writes
    each context clip before the new frames.

    They are checked (Pipeline.resolve) before anything is written, and recorded with the defaults
    filled in, so that `--guidance 0` resumes a folder sampled without `--guidance` when the config's
    weight is 0. The precision and the device type are recorded too: bf16 and fp32 videos, or CPU and
    CUDA noise, differ."""
    import torch

    frames, _, _, w = pipe.resolve(frames, sampler, steps, eta, guidance, condition)
    from pvdm_fast.pipeline import DEFAULT_STEPS

    # ddpm without --steps runs every timestep of the schedule: the same plan as --steps T
    default_steps = int(pipe.alphas_cumprod.numel()) if sampler == "ddpm" else DEFAULT_STEPS.get(sampler)
    steps = default_steps if steps is None else int(steps)
    eta = (1.0 if eta is None else float(eta)) if sampler == "ddim" else eta
    guidance = w
    settings = {"model": model_id, "frames": frames, "sampler": sampler, "steps": steps, "eta": eta,
                "guidance": guidance, "condition": condition, "clip_x0": clip_x0,
                "precision": pipe.precision, "device": pipe.device.type}
    if context is not None:  # only then: folders sampled before contexts existed still resume
        settings.update(context=context_settings or {}, with_context=bool(with_context))
    elif with_context:
        raise ValueError("--with-context needs --context (the videos to continue)")

    def generate(seeds: list[int]) -> np.ndarray:
        clips = None if context is None else pipe.context_clips(context([s - seed for s in seeds]), len(seeds))
        videos = pipe(frames=frames, seeds=seeds, sampler=sampler, steps=steps, eta=eta, guidance=guidance,
                      condition=condition, clip_x0=clip_x0, context=clips)
        if with_context:  # the real frames rounded back to uint8 (a uint8 clip read without a resize is exact)
            real = ((clips.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
            videos = torch.cat([real, videos], dim=1)
        return videos.numpy()

    # what None stood for in older files: the defaults, not this run's values
    defaults = {"steps": default_steps, "eta": 1.0 if sampler == "ddim" else None,
                "guidance": float(pipe.diffusion.guidance)}
    return run_sample_job(generate, out, num, batch_size, seed, formats, fps, settings, progress, defaults, ctx)
