"""The evaluation jobs behind `pvdm eval`: FVD / KVD (I3D), IS (C3D) and reconstruction quality.

Every result is returned with a `protocol` dict that records everything the number depends on
(network file digest and its preprocessing, frames, stride, clip counts, data, seeds), so results
and cached real statistics can be compared safely.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from pvdm_fast.metrics.features import accumulate, dist_rank_world, iter_dataset_batches
from pvdm_fast.metrics.sample_reader import iter_sample_batches, list_samples, sample_size
from pvdm_fast.metrics.stats import (CACHE_REMEDY, FeatureStats, check_cache_path, check_protocol, load_stats,
                                     save_stats)

STATS_FORMAT = "pvdm_fast.feature_stats.v1"
# Keys of a real-statistics protocol that must agree with the generated side's network and clips.
NETWORK_KEYS = ("network", "network_sha256", "preprocessing", "frames", "stride")
CLIP_SAMPLING = "one clip per video at a seeded random start; videos chosen by a seeded permutation"


def _sha256(path) -> str:
    from pvdm_fast.data.latents import file_sha256

    return file_sha256(path)


def _not_count(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1


def check_positive(**values) -> None:
    """ValueError naming the first option (as its CLI flag) that is not a positive integer; None passes."""
    for name, value in values.items():
        if value is not None and _not_count(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def _check_num(num) -> None:
    """Generated-video count: None (every video) or positive; a negative one would slice from the end."""
    if num is not None and _not_count(num):
        raise ValueError(f"--num must be a positive number of videos (or 0 for every generated video), got {num!r}")


def _check_workers(workers) -> None:
    if workers < 0:
        raise ValueError(f"--workers must be 0 (decode in this process) or more, got {workers}")


def _i3d(path, device):
    from pvdm_fast.metrics.i3d import i3d_features, i3d_protocol, load_i3d

    model = load_i3d(path, device=device)
    net = {"network": "i3d-kinetics400", "network_sha256": _sha256(path), "preprocessing": {
        "pvdm": "short side to 224 (bilinear), centre crop 224, x/255*2-1 (pytorch-i3d)",
        "stylegan-v": "TorchScript detector(rescale=True, resize=True, return_features=True) on uint8 values",
    }[i3d_protocol(model)]}
    return model, (lambda videos: i3d_features(model, videos)), net


def i3d_extractor(path, device, frames: int | None = None):
    """(extract, network protocol) of an I3D weights file: `extract` maps uint8 (B, T, H, W, 3) videos to
    float64 (B, D) FVD features on the CPU. With `frames`, clips of that length are checked to fit the I3D."""
    from pvdm_fast.metrics.i3d import check_i3d_frames

    model, extract, net = _i3d(path, device)
    if frames is not None:
        check_i3d_frames(model, frames)
    return extract, net


def _check_real_size(size: tuple[int, int], fake, real_size: int, real_desc: str, fix: str) -> None:
    """FVD / KVD compare both sides at one resolution: the generated videos' (H, W) must be the real
    clips' real_size x real_size."""
    h, w = size
    if (h, w) == (real_size, real_size):
        return
    if h != w:
        fix = "the real clips are square, so the generated videos must be square too"
    raise ValueError(f"generated videos in {fake} are {h}x{w} but {real_desc}; FVD / KVD compare both sides at one "
                     f"resolution: {fix}")


def real_features(real: str, extract, net: dict, *, num: int, frames: int, stride: int, resolution: int,
                  batch_size: int, seed: int, split, fold: int, workers: int, stats_cache, progress: bool,
                  antialias: bool = True):
    """(mean, cov, features, protocol) of the real side: a statistics file, or a dataset spec (cached
    in `stats_cache` when given; a cache made with another protocol is refused). `antialias=False`:
    the real clips are resized with plain bilinear, as the official loader does (recorded in the
    protocol only then, so statistics made before the option keep matching the default)."""
    path = pathlib.Path(real)
    if real.endswith(".npz"):
        stats, protocol = load_stats(path)
        check_protocol(path, protocol, {**net, "frames": frames, "stride": stride}, NETWORK_KEYS)
        return stats["mean"], stats["cov"], stats["features"], {"stats_file": str(path), **protocol}
    protocol = {"format": STATS_FORMAT, **net, "frames": frames, "stride": stride, "data": str(real),
                "split": split, "fold": fold, "resolution": resolution, "num": num, "seed": seed,
                "clip_sampling": CLIP_SAMPLING, **({} if antialias else {"antialias": False})}
    if stats_cache is not None:
        stats_cache = check_cache_path(stats_cache)
    if stats_cache is not None and stats_cache.is_file():
        stats, cached = load_stats(stats_cache, remedy=CACHE_REMEDY)
        check_protocol(stats_cache, cached, protocol)
        return stats["mean"], stats["cov"], stats["features"], {"stats_file": str(stats_cache), **cached}
    rank, world = dist_rank_world()
    batches = iter_dataset_batches(real, num=num, frames=frames, stride=stride, resolution=resolution,
                                   batch_size=batch_size, seed=seed, split=split, fold=fold, workers=workers,
                                   rank=rank, world_size=world, antialias=antialias)
    stats = accumulate(batches, extract, progress=progress, total=num, desc="real")
    if stats_cache is not None and rank == 0:
        save_stats(stats_cache, stats, protocol)
    return stats.mean, stats.cov, stats.features, protocol


def fake_features(fake, extract, *, num, frames, stride, batch_size, progress,
                  size: tuple[int, int] | None = None) -> tuple[FeatureStats, dict]:
    """Features of the first `num` generated videos (all when None) and their protocol, which records
    their resolution [height, width] (`size` when the caller has read it already)."""
    _check_num(num)
    check_positive(frames=frames, stride=stride, batch_size=batch_size)
    rank, world = dist_rank_world()
    available = len(list_samples(fake))
    num = available if num is None else num
    size = size or sample_size(fake, frames, stride)
    batches = iter_sample_batches(fake, batch_size, frames, stride, num=num, rank=rank, world_size=world)
    stats = accumulate(batches, extract, progress=progress, total=num, desc="generated")
    return stats, {"samples": str(fake), "num": num, "frames": frames, "stride": stride,
                   "resolution": [int(size[0]), int(size[1])]}


def evaluate_fvd(*, real: str, fake, i3d, num: int | None = 2048, frames: int = 16, stride: int = 1,
                 resolution: int = 256, batch_size: int = 8, seed: int = 0, split=None, fold: int = 1,
                 workers: int = 0, stats_cache=None, device="cpu", kvd: dict | None = None,
                 progress: bool = False, sample_stride: int | None = None, antialias: bool = True) -> dict:
    """FVD (and KVD when `kvd` holds its options) of the videos in `fake` against `real`.

    Every option, the I3D's minimum clip length, the generated videos' resolution against the real
    clips' and the --stats-cache path are checked before any feature is extracted."""
    from pvdm_fast.metrics.fvd import frechet_distance_from_stats
    from pvdm_fast.metrics.i3d import check_i3d_frames
    from pvdm_fast.metrics.kvd import kernel_distance

    _check_num(num)
    check_positive(frames=frames, stride=stride, batch_size=batch_size, resolution=resolution,
                   sample_stride=sample_stride)
    # Real clips are cut at `stride`; generated videos are read at `sample_stride` (default: the same). A model
    # trained at frame_stride k already emits consecutive frames k apart: evaluate it with --stride k
    # --sample-stride 1.
    sample_stride = stride if sample_stride is None else sample_stride
    _check_workers(workers)
    if kvd is not None:
        check_positive(subsets=kvd.get("num_subsets"))
        if kvd.get("subset_size", 2) < 2:
            raise ValueError(f"--subset-size must be at least 2 (KVD's unbiased estimate), got {kvd['subset_size']}")
    from_stats = real.endswith(".npz")
    if stats_cache is not None and not from_stats:
        stats_cache = check_cache_path(stats_cache)
    model, extract, net = _i3d(i3d, device)
    check_i3d_frames(model, frames)
    available = len(list_samples(fake))  # a missing or empty folder fails here, before any real video is read
    num = available if num is None else num
    if num > available:
        raise ValueError(f"{fake} holds {available} videos, fewer than the {num} requested (lower --num)")
    size = sample_size(fake, frames, sample_stride)
    if not from_stats:
        _check_real_size(size, fake, resolution, f"the real clips are resized to {resolution}x{resolution} "
                         f"(--resolution {resolution})", f"pass --resolution {size[0]}")
    # The real side first: a cached file with another protocol is refused before any video is read.
    mean, cov, feats, real_protocol = real_features(
        real, extract, net, num=num, frames=frames, stride=stride, resolution=resolution,
        batch_size=batch_size, seed=seed, split=split, fold=fold, workers=workers, stats_cache=stats_cache,
        progress=progress, antialias=antialias)
    if from_stats and isinstance(real_protocol.get("resolution"), int):
        r = real_protocol["resolution"]
        _check_real_size(size, fake, r, f"the statistics in {real} are of {r}x{r} real clips",
                         f"evaluate samples of {r}x{r}, or recompute the statistics with --real FORMAT:PATH "
                         f"--resolution {size[0]} --stats-cache FILE")
    fake_stats, fake_protocol = fake_features(fake, extract, num=num, frames=frames, stride=sample_stride,
                                              batch_size=batch_size, progress=progress, size=size)
    result = {"fvd": frechet_distance_from_stats(mean, cov, fake_stats.mean, fake_stats.cov)}
    if kvd is not None:
        if feats is None:
            raise ValueError("the real statistics file holds no features, which KVD needs; recompute it")
        result.update(kernel_distance(feats, fake_stats.features, **kvd))
    protocol = {**net, "frames": frames, "stride": stride, "distance": "Frechet, float64, unbiased (N-1) "
                "covariances, eigen-decomposition square roots", "generated": fake_protocol, "real": real_protocol}
    if kvd is not None:
        protocol["kvd"] = "unbiased MMD^2, kernel (x.y/D + 1)^3, mean over seeded random subsets"
    return {**result, "protocol": protocol}


def evaluate_is(*, fake, c3d, c3d_mean=None, num: int | None = 2048, frames: int = 16, stride: int = 1,
                splits: int = 10, batch_size: int = 8, device="cpu", progress: bool = False) -> dict:
    """Inception Score of the videos in `fake`; options, the clip length the C3D takes and the first
    video are checked before any feature is extracted."""
    from pvdm_fast.metrics.c3d import c3d_probabilities, check_c3d_frames, load_c3d
    from pvdm_fast.metrics.inception_score import inception_score

    _check_num(num)
    check_positive(frames=frames, stride=stride, batch_size=batch_size, splits=splits)
    model = load_c3d(c3d, c3d_mean, device=device)
    check_c3d_frames(model, frames)
    available = len(list_samples(fake))
    count = available if num is None else num
    if count > available:
        raise ValueError(f"{fake} holds {available} videos, fewer than the {count} requested (lower --num)")
    if splits > count:
        raise ValueError(f"--splits {splits} is more than the {count} videos scored; lower --splits")
    stats, fake_protocol = fake_features(fake, lambda v: c3d_probabilities(model, v), num=num, frames=frames,
                                         stride=stride, batch_size=batch_size, progress=progress)
    mean, std = inception_score(stats.features, splits=splits)
    protocol = {"network": "c3d-ucf101", "network_sha256": _sha256(c3d), "splits": splits,
                "shuffle": "numpy RandomState(42) before splitting", "generated": fake_protocol}
    if c3d_mean is not None:
        protocol["mean_sha256"] = _sha256(c3d_mean)
    return {"is": mean, "is_std": std, "protocol": protocol}


def _lpips(path, heads, device):
    """LPIPS from the user's file(s) or None; an unreadable file raises ValueError naming it."""
    from pvdm_fast.metrics.weights import read_errors, read_state_dict
    from pvdm_fast.models.lpips import LPIPS

    if path is None:
        return None
    try:
        return LPIPS.from_file(path, heads).to(device)
    except (ValueError, *read_errors()) as first:
        # An unreadable file? Read each alone: that one raises the ValueError naming it and its kind;
        # when both read, the error was about their contents (missing keys, ...) and stands.
        for file, kind, expected in ((path, "VGG16 / LPIPS", "torchvision's VGG16 (`vgg16-397923af.pth`), or VGG16 "
                                      "and the LPIPS heads merged in one file"),
                                     (heads, "LPIPS linear heads", "the LPIPS heads `vgg.pth`")):
            if file is not None:
                read_state_dict(file, kind, expected)
        raise first


def evaluate_recon(*, autoencoder, data: str, num: int = 256, stride: int | None = None, batch_size: int = 4,
                   seed: int = 0, split=None, fold: int = 1, workers: int = 0, lpips=None, lpips_heads=None,
                   device="cpu", progress: bool = False) -> dict:
    import json

    from safetensors import safe_open

    from pvdm_fast.metrics.recon import evaluate_reconstruction
    from pvdm_fast.pipeline import load_autoencoder

    check_positive(num=num, stride=stride, batch_size=batch_size)
    _check_workers(workers)
    if lpips_heads is not None and lpips is None:
        raise ValueError("--lpips-heads needs --lpips (the VGG16 weights the heads sit on)")
    model = load_autoencoder(autoencoder).to(device).eval()
    with safe_open(str(autoencoder), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    trained_on = config.get("data") or {}  # the data settings the autoencoder was trained with, if recorded
    stride = stride or int(trained_on.get("frame_stride", 1))
    antialias = bool(trained_on.get("antialias", True))
    cfg = model.config
    lp = _lpips(lpips, lpips_heads, device)
    rank, world = dist_rank_world()  # under torchrun each rank scores every world-th clip
    batches = iter_dataset_batches(data, num=num, frames=cfg.frames, stride=stride, resolution=cfg.resolution,
                                   batch_size=batch_size, seed=seed, split=split, fold=fold, workers=workers,
                                   as_uint8=False, antialias=antialias, rank=rank, world_size=world)
    result = evaluate_reconstruction(model, batches, lp, device=device, progress=progress and rank == 0)
    protocol = {"autoencoder_sha256": _sha256(autoencoder), "data": data, "split": split, "fold": fold,
                "num": num, "frames": cfg.frames, "stride": stride, "resolution": cfg.resolution, "seed": seed,
                "antialias": antialias,
                "clip_sampling": CLIP_SAMPLING, "psnr": "per video on [0, 1], mean over videos",
                "ssim": "Gaussian 11x11 sigma 1.5, valid, per frame, mean over frames and videos"}
    if lp is not None:
        protocol["lpips"] = "VGG16, per frame, mean over frames and videos"
        protocol["lpips_sha256"] = _sha256(lpips) + ("," + _sha256(lpips_heads) if lpips_heads else "")
    return {**result, "protocol": protocol}


def to_json_ready(obj):
    if isinstance(obj, dict):
        return {k: to_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj
