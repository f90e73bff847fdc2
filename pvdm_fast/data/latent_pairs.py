"""Which cached windows make one diffusion training example, as close to the official sampling as
aligned windows allow.

Officially (PVDM tools/dataloader.py + tools/trainer.py) each draw of a video takes a random 2T-frame
clip; a conditional batch trains its last T frames given its first T, an unconditional one a T-frame
window at a random prefix in {0..T} of the clip. Here a video's "choices" are its pairs (prev, cur) of
cached windows `hop` = T * stride frames apart, each with the cached windows between them: the
unconditional target is the one whose start is nearest prev + prefix frames. A video without a pair
(one window, or windows with gaps) has one choice per window, without a condition (official padding).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PairIndex:
    """Item i of a LatentDataset is video `videos[i]`; its choices are `first[i] : first[i] + count[i]`.
    rows (C, K) int64: cache rows of a choice's windows by start, prev first and cur last, -1 where
    missing (a video without a pair has no prev; choices with fewer windows between are padded before
    cur). at (C, K) float32: starts relative to prev, as fractions of hop (prev 0, cur 1)."""

    videos: np.ndarray
    first: np.ndarray
    count: np.ndarray
    rows: np.ndarray
    at: np.ndarray

    @property
    def width(self) -> int:
        """K: prev, the windows between (K - 2 slots), cur."""
        return self.rows.shape[1]


def _choices_of(where: dict[int, int], hop: int) -> list[tuple[list[int], list[float]]]:
    """One video's choices from its cached windows (start -> row)."""
    starts = sorted(where)
    pairs = []
    for p in starts:
        if p + hop in where:
            between = starts[bisect.bisect_right(starts, p):bisect.bisect_left(starts, p + hop)]
            window = [p, *between, p + hop]
            pairs.append(([where[s] for s in window], [(s - p) / hop for s in window]))
    return pairs or [([-1, where[s]], [0.0, 1.0]) for s in starts]


def _pad(rows: list[int], at: list[float], width: int) -> tuple[list[int], list[float]]:
    gap = width - len(rows)
    return rows[:-1] + [-1] * gap + rows[-1:], at[:-1] + [0.0] * gap + at[-1:]


def build_pair_index(keys: list[tuple[int, int]], hop: int) -> PairIndex:
    """The choices of every video from the cache's rows, `keys[row] = (video, start)`."""
    by_video: dict[int, dict[int, int]] = {}
    for row, (video, start) in enumerate(keys):
        by_video.setdefault(video, {})[start] = row
    videos = sorted(by_video)
    per_video = [_choices_of(by_video[v], hop) for v in videos]
    choices = [c for mine in per_video for c in mine]
    width = max(len(rows) for rows, _ in choices)
    padded = [_pad(rows, at, width) for rows, at in choices]
    count = np.array([len(mine) for mine in per_video], dtype=np.int64)
    rows = np.array([r for r, _ in padded], dtype=np.int64)
    at = np.array([a for _, a in padded], dtype=np.float32)
    return PairIndex(np.array(videos, dtype=np.int64), np.cumsum(count) - count, count, rows, at)


def cache_targets(batch: dict, conditioned: torch.Tensor, prefix: torch.Tensor,
                  frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, cond, cond_valid) of a batch of LatentDataset items for this step's coin and prefixes.

    conditioned (B,) bool, prefix (B,) int in [0, frames]. A conditional row with a condition trains
    cur given prev; any other row trains the cached window whose start is nearest prev + prefix/frames
    of hop (ties: the earlier one), and its condition is dropped by joint_loss (cond_valid & conditioned);
    a row without a pair trains cur. x, cond: (B, 4, L) float32; cond_valid (B,) bool."""
    cur, cond = batch["latent"].float(), batch["cond"].float()
    valid = batch["cond_valid"].to(cur.device, torch.bool)
    b = cur.shape[0]
    stack = torch.cat([cond[:, None], batch["between"].float(), cur[:, None]], dim=1)  # (B, K, 4, L)
    ends = torch.ones(b, 1, device=cur.device)
    at = torch.cat([ends * 0, batch["between_at"].float(), ends], dim=1)
    ok = torch.cat([valid[:, None], batch["between_valid"].bool(), ends.bool()], dim=1)
    wanted = prefix.to(cur.device).float().view(b, 1) / frames
    nearest = (at - wanted).abs().masked_fill(~ok, float("inf")).argmin(dim=1)
    pick = torch.where(conditioned.to(cur.device) & valid, stack.shape[1] - 1, nearest)
    return stack[torch.arange(b, device=cur.device), pick], cond, valid
