"""The LayerNorm of the fused row ops' references (triplane_decode, axis_gather), in closed form: the
statistics are returned for the backward, and the variance is the centred two-pass one, which is what
the kernels compute and what the tolerance tests hold them to."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor
import torch


def layernorm_reference(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd) over the last dim of x, all in x's dtype (the compute dtype)."""
    mean = x.mean(-1)
    centred = x - mean[..., None]
    rstd = torch.rsqrt((centred * centred).mean(-1) + eps)
    return centred * rstd[..., None] * weight.to(x.dtype) + bias.to(x.dtype), mean, rstd


def layernorm_backward_reference(x: Tensor, dy: Tensor, weight: Tensor, mean: Tensor,
                                 rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of y = LayerNorm(x) given dy, in x's dtype; mean/rstd have x's shape
    without the last dim, and dweight/dbias sum over every other dim."""
    cdt = x.dtype
    r = rstd.to(cdt)[..., None]
    xhat = (x - mean.to(cdt)[..., None]) * r
    dyc = dy.to(cdt)
    gy = dyc * weight.to(cdt)
    dx = r * (gy - gy.mean(-1, keepdim=True) - xhat * (gy * xhat).mean(-1, keepdim=True))
    rows = tuple(range(x.dim() - 1))
    return dx, (dyc * xhat).sum(rows), dyc.sum(rows)
