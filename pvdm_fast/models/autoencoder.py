"""The PVDM video autoencoder: TimeSformer encoder -> three axis projections -> triplane latent ->
broadcast-sum -> TimeSformer decoder -> pixels (PVDM_SPEC.md "Autoencoder").

Every size comes from `AutoencoderConfig`; unlike the official code this works at 128x128 with patch
4, at any frame count and with non-square frames. The triplane decode and the axis gathers go
through `pvdm_fast.ops` (fused CUDA/Triton kernels on GPUs, the PyTorch reference elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pvdm_fast import ops
from pvdm_fast.models.layers import AxisTransformer, TimeSformer
from pvdm_fast.models.triplane import latent_length, merge_planes

AXES = ("xy", "yt", "xt")


@dataclass
class AutoencoderConfig:
    resolution: Any = 256               # frame size: an int (square) or [height, width]
    frames: int = 16
    patch_size: int = 8
    channels: int = 384                 # token width C
    embed_dim: int = 4                  # latent channels per plane
    encoder_depth: int = 8
    decoder_depth: int = 8
    heads: int = 8
    dim_head: int = 64
    axis_depth: int = 4
    axis_heads: int = 4
    axis_dim_head: Optional[int] = None  # None: channels // 8 (official)
    axis_mlp_dim: int = 512
    in_channels: int = 3
    checkpoint: bool = False            # activation checkpointing per TimeSformer block (training)

    @property
    def frame_size(self) -> tuple[int, int]:
        r = self.resolution
        if isinstance(r, int):
            return (r, r)
        r = list(r)
        if len(r) != 2:
            raise ValueError(f"autoencoder.resolution must be an int or [height, width], got {self.resolution}")
        return (int(r[0]), int(r[1]))

    @property
    def grid(self) -> tuple[int, int, int]:
        """The token grid (T, h, w) = the latent planes' sizes."""
        hh, ww = self.frame_size
        return (self.frames, hh // self.patch_size, ww // self.patch_size)

    @property
    def latent_length(self) -> int:
        return latent_length(*self.grid)

    @property
    def axis_head_dim(self) -> int:
        return self.axis_dim_head if self.axis_dim_head is not None else self.channels // 8

    def validate(self) -> None:
        hh, ww = self.frame_size
        for name in ("frames", "patch_size", "channels", "embed_dim", "encoder_depth", "decoder_depth", "heads",
                     "dim_head", "axis_depth", "axis_heads", "axis_mlp_dim", "in_channels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"autoencoder.{name} must be positive, got {getattr(self, name)}")
        if hh <= 0 or ww <= 0 or hh % self.patch_size or ww % self.patch_size:
            raise ValueError(f"autoencoder.resolution {self.resolution} must be positive multiples of "
                             f"patch_size {self.patch_size}")
        if self.dim_head % 4:
            raise ValueError(f"autoencoder.dim_head ({self.dim_head}) must be a multiple of 4 (rotary pairs over "
                             f"two axes)")
        if self.axis_head_dim <= 0:
            raise ValueError(f"autoencoder.axis_dim_head resolves to {self.axis_head_dim}; set it explicitly")


class TimeSformerEncoder(TimeSformer):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg.channels, cfg.encoder_depth, cfg.heads, cfg.dim_head, cfg.checkpoint)
        p = cfg.patch_size
        self.patch_size = p
        self.to_patch_embedding = nn.Linear(cfg.in_channels * p * p, cfg.channels)

    def forward(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, T, h, w, C). Patches flattened as (row, column, channel)."""
        b, c, t, hh, ww = video.shape
        p = self.patch_size
        patches = video.view(b, c, t, hh // p, p, ww // p, p).permute(0, 2, 3, 5, 4, 6, 1)
        x = self.to_patch_embedding(patches.reshape(b, t, hh // p, ww // p, p * p * c))
        return self.run_blocks(x)


class Autoencoder(nn.Module):
    """`ae(video) -> recon`, `ae.encode(video) -> (B, E, h*w + T*w + T*h)`, `ae.decode(latent) -> video`.

    Videos are (B, 3, T, H, W) in [-1, 1]; the latent is the flat triplane in xy, yt, xt order, in (-1, 1).
    """

    def __init__(self, config: AutoencoderConfig | None = None, **overrides):
        super().__init__()
        cfg = config if config is not None else AutoencoderConfig(**overrides)
        if config is not None and overrides:
            raise ValueError("give either an AutoencoderConfig or keyword overrides, not both")
        cfg.validate()
        self.config = cfg
        c, (t, h, w) = cfg.channels, cfg.grid
        self.encoder = TimeSformerEncoder(cfg)
        self.decoder = TimeSformer(c, cfg.decoder_depth, cfg.heads, cfg.dim_head, cfg.checkpoint)
        axis_len = {"xy": t, "yt": h, "xt": w}   # the axis each projection attends over
        for a in AXES:
            setattr(self, f"{a}_quant_attn", AxisTransformer(c, cfg.axis_depth, cfg.axis_heads, cfg.axis_head_dim,
                                                             cfg.axis_mlp_dim))
            setattr(self, f"{a}_token", nn.Parameter(torch.randn(1, 1, c)))
            setattr(self, f"{a}_pos_embedding", nn.Parameter(torch.randn(1, axis_len[a] + 1, c)))
            setattr(self, f"pre_{a}", nn.Conv2d(c, cfg.embed_dim, 1))
            setattr(self, f"post_{a}", nn.Conv2d(cfg.embed_dim, c, 1))
        self.to_pixel = nn.Sequential(nn.Identity(), nn.ConvTranspose2d(c, cfg.in_channels, cfg.patch_size,
                                                                        stride=cfg.patch_size))

    # ---- shapes
    def _check_video(self, video: Tensor) -> None:
        cfg = self.config
        hh, ww = cfg.frame_size
        want = (cfg.in_channels, cfg.frames, hh, ww)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(f"expected a video (B, {', '.join(map(str, want))}) in [-1, 1], got shape "
                             f"{tuple(video.shape)}")

    def _check_latent(self, latent: Tensor) -> None:
        want = (self.config.embed_dim, self.config.latent_length)
        if latent.dim() != 3 or tuple(latent.shape[1:]) != want:
            t, h, w = self.config.grid
            raise ValueError(f"expected a latent (B, {want[0]}, {want[1]}) = h*w + T*w + T*h for the grid "
                             f"T={t}, h={h}, w={w}; got shape {tuple(latent.shape)}")

    # ---- encoder side
    def _axis_plane(self, grid_tokens: Tensor, axis: str) -> Tensor:
        """One projection: sequences along `axis` (+ appended token, + position embedding) through the
        axis transformer, read at position 0 -> plane (B, C, rows, cols)."""
        b = grid_tokens.shape[0]
        t, h, w = self.config.grid
        attn: AxisTransformer = getattr(self, f"{axis}_quant_attn")
        norm = attn.layers[0][0].norm
        seq, normed = ops.axis_gather(grid_tokens, (t, h, w), axis, getattr(self, f"{axis}_token"),
                                      getattr(self, f"{axis}_pos_embedding"), norm_weight=norm.weight,
                                      norm_bias=norm.bias, eps=norm.eps)
        out = attn.first_output(seq, normed)  # (lines, C)
        rows, cols = {"xy": (h, w), "yt": (t, w), "xt": (t, h)}[axis]
        return out.view(b, rows, cols, -1).permute(0, 3, 1, 2)

    def encode(self, video: Tensor) -> Tensor:
        self._check_video(video)
        x = self.encoder(video)                       # (B, T, h, w, C)
        tokens = x.flatten(1, 3)                      # (B, T*h*w, C), (t, row, col) order: a view
        planes = [torch.tanh(getattr(self, f"pre_{a}")(self._axis_plane(tokens, a))) for a in AXES]
        return merge_planes(planes)

    # ---- decoder side
    def decode(self, latent: Tensor) -> Tensor:
        self._check_latent(latent)
        t, h, w = self.config.grid
        norm = self.decoder.layers[0][0].norm
        convs = [getattr(self, f"post_{a}") for a in AXES]
        v, normed = ops.triplane_decode(latent, (t, h, w), [m.weight for m in convs], [m.bias for m in convs],
                                        norm_weight=norm.weight, norm_bias=norm.bias, eps=norm.eps)
        b = latent.shape[0]
        x = self.decoder.run_blocks(v.view(b, t, h, w, -1), normed.view(b, t, h, w, -1))
        return self._to_pixels(x)

    def _to_pixels(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        frames = self.to_pixel(x.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w))
        video = frames.view(b, t, *frames.shape[1:]).transpose(1, 2)
        return 2 * torch.sigmoid(video) - 1

    def forward(self, video: Tensor) -> Tensor:
        return self.decode(self.encode(video))
