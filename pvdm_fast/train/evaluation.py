"""Held-out evaluation during training (`eval_every`): the pieces both stages share.

The clips are the `pvdm eval` clips (metrics.features.iter_dataset_batches: a seeded permutation of
the eval data's videos, one clip each at a seeded start), read afresh at every evaluation and sharded
over the ranks (rank r takes clips r, r + W, ...); feature statistics are gathered over the ranks and
scalar sums all-reduced, so every rank returns the same numbers. Nothing here draws from the global
generators or the training data stream; the trainer runs it under `rng.preserved()` besides.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Iterable

import torch

from pvdm_fast.train import distributed as D

REAL_STATS = pathlib.Path("eval") / "real_stats.npz"  # in the run folder: the diffusion FVD's real side


def load_fvd_network(path: str, device: torch.device, frames: int):
    """(extract, network protocol) of the `eval_i3d` file, checked to take clips of `frames` frames; any
    problem with the file is a ValueError naming the setting (raised before training starts)."""
    from pvdm_fast.metrics.evaluate import i3d_extractor

    try:
        return i3d_extractor(path, device, frames)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"eval_i3d={path}: {exc}".replace("raise --frames", "evaluate longer clips (data.frames)")) \
            from None


class EvalClips:
    """Where the held-out clips come from and how they are cut (the training clips' settings)."""

    def __init__(self, spec: str, *, num: int, frames: int, stride: int, resolution: int, split, fold: int,
                 antialias: bool, seed: int, batch_size: int, ctx: D.DistContext):
        self.spec, self.num, self.frames, self.stride, self.resolution = spec, num, frames, stride, resolution
        self.split, self.fold, self.antialias, self.seed = split, fold, antialias, seed
        self.batch_size, self.ctx = batch_size, ctx

    def check(self) -> None:
        """Open the eval data once: a missing path, an unknown split or too few videos is a ValueError now,
        not at the first evaluation."""
        from pvdm_fast.data import open_dataset

        try:
            dataset = open_dataset(self.spec, resolution=self.resolution, frames=self.frames, stride=self.stride,
                                   mode="train", split=self.split, fold=self.fold, seed=self.seed,
                                   antialias=self.antialias, substitute=True)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"eval_data={self.spec} (split {self.split}): {exc}") from None
        if len(dataset) < self.num:
            raise ValueError(f"eval_data={self.spec} (split {self.split}) has {len(dataset)} usable videos for "
                             f"{self.frames} frames at stride {self.stride}, fewer than eval_videos={self.num}; "
                             "lower eval_videos or pass other eval_data")

    def batches(self, as_uint8: bool) -> Iterable:
        """This rank's share: float (B, 3, T, H, W) in [-1, 1] on the CPU, or uint8 (B, T, H, W, 3) numpy."""
        from pvdm_fast.metrics.features import iter_dataset_batches

        return iter_dataset_batches(self.spec, num=self.num, frames=self.frames, stride=self.stride,
                                    resolution=self.resolution, batch_size=self.batch_size, seed=self.seed,
                                    split=self.split, fold=self.fold, workers=0, rank=self.ctx.rank,
                                    world_size=self.ctx.world_size, as_uint8=as_uint8, antialias=self.antialias)

    def protocol(self, net: dict) -> dict:
        """What the real statistics depend on (the `pvdm eval fvd --stats-cache` protocol, plus antialias)."""
        from pvdm_fast.metrics.evaluate import CLIP_SAMPLING, STATS_FORMAT

        return {"format": STATS_FORMAT, **net, "frames": self.frames, "stride": self.stride, "data": self.spec,
                "split": self.split, "fold": self.fold, "resolution": self.resolution, "num": self.num,
                "seed": self.seed, "antialias": self.antialias, "clip_sampling": CLIP_SAMPLING}


def quantise_real(video: torch.Tensor) -> torch.Tensor:
    """Float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3), rounded as the real clips of `pvdm eval`."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def quantise_generated(video: torch.Tensor) -> torch.Tensor:
    """Float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3), truncated as `pvdm sample` writes videos."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 4, 1)


def gather_stats(stats):
    """Every rank's FeatureStats merged, on every rank (a collective under torchrun)."""
    from pvdm_fast.metrics.features import dist_rank_world, gather

    return gather(stats) if dist_rank_world()[1] > 1 else stats


def frechet(real_mean, real_cov, stats) -> float:
    from pvdm_fast.metrics.fvd import frechet_distance_from_stats

    return frechet_distance_from_stats(real_mean, real_cov, stats.mean, stats.cov)


def cached_real_stats(path: pathlib.Path, protocol: dict, compute: Callable, ctx: D.DistContext):
    """(mean, cov) of the real clips: from `path` when rank 0 finds it there with this protocol, else
    computed by every rank (`compute()`: gathered FeatureStats) and written by rank 0. The decision and
    the statistics are rank 0's, broadcast, so every rank takes the same collectives."""
    from pvdm_fast.metrics.stats import load_stats, save_stats

    wanted = json.loads(json.dumps(protocol))
    found = None
    if ctx.is_main and path.is_file():
        try:
            stats, cached = load_stats(path)
            if cached == wanted:
                found = (stats["mean"], stats["cov"])
        except ValueError:
            found = None  # unreadable (a crash while writing it cannot leave one: it is written atomically)
    found = D.broadcast_object(ctx, found)
    if found is not None:
        return found
    stats = compute()
    if ctx.is_main:
        save_stats(path, stats, protocol)
    return stats.mean, stats.cov


def format_results(step: int, results: dict[str, float], seconds: float) -> str:
    shown = ", ".join(f"{k.split('/', 1)[-1]} {v:.5g}" for k, v in results.items())
    return f"step {step} held-out eval: {shown} ({seconds:.1f} s)"
