"""The autoencoder's rotary position tables (PVDM_SPEC.md "Rotary embeddings") and their plain application.

Both rotations act on adjacent pairs (2i, 2i+1) of each head's channels:
    out_2i = x_2i cos(a_2i) - x_2i+1 sin(a_2i),   out_2i+1 = x_2i+1 cos(a_2i+1) + x_2i sin(a_2i+1).
Tables are (positions, dim_head) float32 `cos` and *signed* `sin` (-sin on even slots, +sin on odd ones),
so one application is `x * cos + swap_pairs(x) * sin`, the form the attention kernels use too.

- time: angles n * inv_freq_j, laid out as the dim_head/2 angles followed by the same angles again,
  so a pair mixes two different frequencies (an official quirk the trained weights depend on).
- space: (y * s_k * pi for each scale, then x * s_k * pi), each angle repeated twice consecutively,
  rows y and columns x in linspace(-1, 1), positions row-major over (h, w).
The buffers `inv_freqs` / `scales` are part of official state dicts; these functions take them as given.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor


def _check_dim(dim_head: int, multiple: int, what: str) -> None:
    if dim_head <= 0 or dim_head % multiple:
        raise ValueError(f"{what} rotary needs a head dim that is a positive multiple of {multiple}, got {dim_head}")


def time_inv_freqs(dim_head: int) -> Tensor:
    """inv_freq_j = 10000^(-2j/dim_head), j < dim_head/2 (float32, as the official buffer)."""
    _check_dim(dim_head, 2, "time")
    return (1.0 / (10000 ** (torch.arange(0, dim_head, 2, dtype=torch.float64) / dim_head))).float()


def space_scales(dim_head: int, max_freq: float = 10.0) -> Tensor:
    """s_k = 2^linspace(0, log2(max_freq / 2), dim_head/4) (1..5 for the official max_freq 10), float32."""
    _check_dim(dim_head, 4, "space")
    return torch.logspace(0.0, math.log2(max_freq / 2), dim_head // 4, base=2, dtype=torch.float64).float()


def time_angles(inv_freqs: Tensor, frames: int) -> Tensor:
    """(frames, 2 * len(inv_freqs)) float64: [n * inv_freqs, n * inv_freqs] for frame n."""
    n = torch.arange(frames, dtype=torch.float64, device=inv_freqs.device)
    a = n[:, None] * inv_freqs.double()[None]
    return torch.cat([a, a], dim=-1)


def space_angles(scales: Tensor, height: int, width: int) -> Tensor:
    """(height * width, 4 * len(scales)) float64, positions row-major over (height, width)."""
    s = scales.double() * math.pi
    ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64, device=scales.device)[:, None] * s
    xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64, device=scales.device)[:, None] * s
    grid = torch.cat([ys[:, None, :].expand(height, width, -1), xs[None, :, :].expand(height, width, -1)], -1)
    return grid.reshape(height * width, -1).repeat_interleave(2, dim=-1)


def rotary_cos_sin(angles: Tensor, dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
    """(cos, signed sin) of `angles` (..., d), computed in float64 and stored in `dtype`."""
    if angles.shape[-1] % 2:
        raise ValueError(f"rotary angles need an even last dim (adjacent pairs), got {tuple(angles.shape)}")
    a = angles.double()
    sign = torch.tensor([-1.0, 1.0], dtype=torch.float64, device=a.device).repeat(a.shape[-1] // 2)
    return a.cos().to(dtype).contiguous(), (a.sin() * sign).to(dtype).contiguous()


def swap_pairs(x: Tensor) -> Tensor:
    """(x_1, x_0, x_3, x_2, ...) along the last dim."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def apply_rotary_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., L, d) by tables (L, d) (broadcast over leading dims), in x's dtype."""
    return x * cos.to(x.dtype) + swap_pairs(x) * sin.to(x.dtype)
