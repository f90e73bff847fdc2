"""Building blocks of the triplane UNet (ADM-style): timestep embedding, ResBlock, attention.

Submodule layouts mirror the official checkpoints (e.g. `in_layers.0` is the GroupNorm, `in_layers.2`
the conv, `out_layers.3` the zero-init conv), so an official state dict loads by name with no renaming.
The Sequential containers are only holders of parameters: the forward passes fuse GroupNorm + FiLM +
SiLU into one `pvdm_fast.ops.group_norm_silu` call instead of running the containers in order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvdm_fast import ops
from pvdm_fast.ops import group_norm_silu

GROUPS = 32  # the official `normalization(channels)` is GroupNorm(32, channels)


def check_norm_channels(channels: int) -> None:
    if channels % GROUPS:
        raise ValueError(f"UNet widths must be multiples of {GROUPS} (GroupNorm groups); got {channels} channels: "
                         "choose model_channels and channel_mult so every level width is a multiple of 32")


def norm_act(norm: nn.GroupNorm, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None,
             silu: bool = True) -> Tensor:
    """GroupNorm (float32 statistics) -> optional FiLM `* (1 + scale) + shift` -> optional SiLU, fused."""
    return group_norm_silu(x, norm.weight, norm.bias, scale=scale, shift=shift, num_groups=norm.num_groups,
                           eps=norm.eps, apply_silu=silu)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding, [cos, sin] halves, always computed in float32 as the official code does
    (the checkpoints were trained with these float32 values, so bf16 or float64 would shift them)."""
    half = dim // 2
    with torch.autocast(t.device.type, enabled=False):
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = F.pad(emb, (0, 1))
    return emb


def resample(x: Tensor, mode: str | None) -> Tensor:
    """2x average-pool down ('down') or nearest 2x up ('up'), as in the official ResBlock up/down."""
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3, timestep FiLM (scale, shift), GN-SiLU-dropout-zero conv3x3, residual (1x1 skip)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, resample: str | None = None):
        super().__init__()
        out_channels = out_channels or channels
        check_norm_channels(channels)
        check_norm_channels(out_channels)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.in_layers = nn.Sequential(nn.GroupNorm(GROUPS, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(GROUPS, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = norm_act(self.in_layers[0], x)
        # Up/down happens between the activation and the conv, on both paths (official order).
        h = self.in_layers[2](resample(h, self.resample))
        x = resample(x, self.resample)
        emb_out = self.emb_layers[1](F.silu(emb)).to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_act(self.out_layers[0], h, scale=scale, shift=shift)
        else:
            h = norm_act(self.out_layers[0], h + emb_out[:, :, None, None])
        h = self.out_layers[3](self.out_layers[2](h))
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Plain down-sampling (resblock_updown=False): strided 3x3 conv, or 2x2 average pool."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Plain up-sampling (resblock_updown=False): nearest 2x, then a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = resample(x, "up")
        return self.conv(x) if self.conv is not None else x


def legacy_attention(qkv: Tensor, heads: int) -> Tensor:
    """Token-major (B, L, 3C) with the "legacy" channel order (per head: [q, k, v]) -> (B, L, C).

    The official scores use q and k each scaled by ch^-1/4, i.e. q.k / sqrt(ch): exactly SDPA's default
    scale, so SDPA (flash / memory-efficient kernels, float32 softmax accumulation) computes the same
    thing without materialising the L x L score matrix. q, k, v stay views with unit stride in the
    head dim, which is what the fused CPU and GPU kernels need.
    """
    b, length, width = qkv.shape
    ch = width // (3 * heads)
    q, k, v = (u.transpose(1, 2) for u in qkv.view(b, length, heads, 3, ch).unbind(3))
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, ch)
    return out.transpose(1, 2).reshape(b, length, heads * ch)


class AttentionBlock(nn.Module):
    """GroupNorm -> 1x1 conv to qkv -> multi-head self-attention -> zero-init 1x1 conv, residual.

    Used both inside blocks (over one plane's tokens) and as the joint attention over the tokens of
    all three planes; x is (B, C, *spatial).
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        check_norm_channels(channels)
        if heads <= 0 or channels % heads:
            raise ValueError(f"attention over {channels} channels cannot be split into {heads} heads; "
                             "set num_heads (or num_head_channels) to divide every level width")
        self.heads = heads
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        # The 1x1 convs are applied as linears on the token-major view (same weights, no transposes of
        # q, k, v needed for SDPA).
        tokens = norm_act(self.norm, x, silu=False).transpose(1, 2)
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias)
        if ops.fused("joint_attention", qkv, case=f"L{qkv.shape[1]}"):  # reads the token-major qkv in place
            attn = ops.joint_attention(qkv.transpose(1, 2), self.heads).transpose(1, 2)
        else:
            attn = legacy_attention(qkv, self.heads)
        h = F.linear(attn, self.proj_out.weight[:, :, 0], self.proj_out.bias)
        return (x + h.transpose(1, 2)).reshape(shape)


class TimestepSequential(nn.ModuleList):
    """The layers of one UNet entry (e.g. ResBlock then AttentionBlock); every layer gets (x, emb)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock, Downsample, Upsample)) else layer(x)
        return x
