"""Long videos by autoregressive clip generation (PVDM paper, Sec. 3.3 and the spec's protocol).

The first clip is sampled with a zero condition; each next clip is conditioned on the previous one,
either re-encoded from its decoded frames (official: decode, re-encode, condition) or on its latent
directly (`condition="latent"`, which skips one encoder pass per clip).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

CONDITIONS = ("reencode", "latent")

SampleClip = Callable[[torch.Tensor | None], torch.Tensor]
"""cond (B, C, L) latent or None (zero condition) -> sampled latent (B, C, L)."""


def num_clips(frames: int, clip_frames: int) -> int:
    """How many clips make `frames` frames; frames must be a positive multiple of the clip length."""
    if clip_frames <= 0:
        raise ValueError(f"clip length must be positive, got {clip_frames}")
    if frames <= 0 or frames % clip_frames:
        raise ValueError(f"frames must be a positive multiple of the model's clip length {clip_frames}, "
                         f"got {frames} (e.g. {clip_frames}, {2 * clip_frames}, {8 * clip_frames})")
    return frames // clip_frames


def iter_long_video(sample_clip: SampleClip, decode: Callable[[torch.Tensor], torch.Tensor],
                    encode: Callable[[torch.Tensor], torch.Tensor] | None, clips: int,
                    condition: str = "reencode", first_cond: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield the decoded clips (B, 3, T, H, W) in [-1, 1], in order; clip k > 0 is conditioned on k-1.
    `first_cond`: the latent the first clip is conditioned on (a real clip's, to continue a video);
    None: a zero condition, as for a video from scratch.

    Yielding clip by clip lets callers move each one off the device before the next is sampled.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    if condition == "reencode" and encode is None:
        raise ValueError("condition='reencode' needs the autoencoder's encoder")
    if clips < 1:
        raise ValueError(f"need at least one clip, got {clips}")
    cond = first_cond
    for k in range(clips):
        latent = sample_clip(cond)
        # Clamped as the official evaluation does before using or re-encoding decoded frames.
        video = decode(latent).clamp(-1.0, 1.0)
        yield video
        if k + 1 < clips:
            cond = encode(video) if condition == "reencode" else latent


def long_video(sample_clip: SampleClip, decode: Callable[[torch.Tensor], torch.Tensor],
               encode: Callable[[torch.Tensor], torch.Tensor] | None, clips: int,
               condition: str = "reencode") -> torch.Tensor:
    """All clips concatenated along time: (B, 3, clips * T, H, W)."""
    return torch.cat(list(iter_long_video(sample_clip, decode, encode, clips, condition)), dim=2)
