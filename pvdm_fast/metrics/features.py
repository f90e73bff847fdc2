"""Feature extraction over a stream of uint8 video batches, optionally across torchrun ranks.

Videos are read batch by batch (from a sample folder or a dataset spec) and only their features are
kept. With a process group, each rank reads its own shard and rank 0 gathers the statistics.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from pvdm_fast.data.loader import dist_rank_world  # noqa: F401 - (rank, world) for the metrics modules
from pvdm_fast.metrics.stats import FeatureStats


def iter_dataset_batches(spec: str, *, num: int, frames: int, stride: int, resolution: int, batch_size: int,
                         seed: int = 0, split: str | None = None, fold: int = 1, workers: int = 0,
                         rank: int = 0, world_size: int = 1, as_uint8: bool = True,
                         antialias: bool = True) -> Iterator:
    """uint8 (B, frames, R, R, 3) clips of a `FORMAT:PATH` dataset: `num` videos drawn with a seeded
    permutation, one clip each at a seeded random start (the training clip sampling), quantised to
    uint8 like generated samples so both sides take the same path into the network (as_uint8=False:
    float32 (B, 3, frames, R, R) in [-1, 1] instead, for reconstruction metrics)."""
    from pvdm_fast.data import open_dataset

    dataset = open_dataset(spec, resolution=resolution, frames=frames, stride=stride, mode="train",
                           split=split, fold=fold, seed=seed, antialias=antialias, substitute=True)
    if len(dataset) < num:
        raise ValueError(f"{spec} has {len(dataset)} usable videos for {frames} frames at stride {stride}, "
                         f"fewer than the {num} requested (lower --num)")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num].tolist()
    mine = order[rank::world_size]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    for batch in loader:
        video = batch["video"]  # (B, 3, T, R, R) in [-1, 1]
        if not as_uint8:
            yield video
            continue
        yield ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def accumulate(batches: Iterable[np.ndarray], extract: Callable[[torch.Tensor], torch.Tensor],
               keep_features: bool = True, progress: bool = False, total: int | None = None,
               desc: str = "") -> FeatureStats:
    """Run `extract` (uint8 (B, T, H, W, 3) -> (B, D)) over the batches; gather ranks onto every rank."""
    stats = FeatureStats(keep_features)
    rank, world = dist_rank_world()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="video")
    for batch in batches:
        stats.update(extract(torch.from_numpy(batch)))
        if bar is not None:
            bar.update(len(batch) * world)
    if bar is not None:
        bar.close()
    return gather(stats) if world > 1 else stats


def gather(stats: FeatureStats) -> FeatureStats:
    """Merge every rank's statistics. Rank r holds items r, r + W, r + 2W, ... of the global order, so
    the features are interleaved back into that order: the result does not depend on the world size."""
    rank, world = dist_rank_world()
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, (stats.count, stats.mean, stats.m2, stats.features
                                                if stats.keep_features else None))
    merged = FeatureStats(keep_features=False)
    for count, mean, m2, _ in parts:
        if count:
            merged._merge(count, mean, m2)
    merged.keep_features = stats.keep_features
    if stats.keep_features and merged.count:
        feats = np.zeros((merged.count, merged.mean.shape[0]), np.float32)
        for r, (count, _, _, f) in enumerate(parts):
            if count:  # a rank that read no video (fewer videos than ranks) sends a (0, 0) array
                feats[r::world] = f
        merged._features = [feats]
    return merged
