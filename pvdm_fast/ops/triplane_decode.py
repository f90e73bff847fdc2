"""Triplane decode: three latent planes -> the decoder's (B, T*h*w, C) token volume, optionally with
the decoder's first LayerNorm fused in.

The post projections (1x1 convs E -> C with bias) run on the small planes with torch (a plane holds
h*w + T*w + T*h tokens, an eighth of the volume at the base config); the custom op `pvdm::triplane_sum`
then writes V[b, (t, y, x)] = P_xy[b, y, x] + P_yt[b, t, x] + P_xt[b, t, y] straight into the token
layout, and, when norm weights are given, Y = LayerNorm(V) in the same pass so the first decoder block
does not re-read V. The backward reduces dV (+ the LayerNorm backward of dY) over each plane's missing
axis in one pass: dP_xy = sum over t, dP_yt = sum over y, dP_xt = sum over x.

P planes are channels-last: P_xy (B, h, w, C), P_yt (B, T, w, C), P_xt (B, T, h, C), in the output
dtype; every sum and statistic is float32 (float64 on the float64 reference).
"""

from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pvdm_fast.ops import _ext, _launch, dispatch
from pvdm_fast.ops._layernorm import layernorm_backward_reference, layernorm_reference

_LOW = (torch.float32, torch.float16, torch.bfloat16)
SPEC = dispatch.register(dispatch.OpSpec(
    "triplane_decode",
    {"reference": _LOW + (torch.float64,), "triton": _LOW, "cuda": _LOW},
))
MAX_CHANNELS_CUDA = 1024  # kernels/triplane_decode.h: kTriMaxChannels
MAX_SUM_SMEM_CUDA = 96 * 1024  # kTriMaxSmemBytes: the backward's axis-sum accumulators per block


def _cuda_limit(p_xy: Tensor, p_yt: Tensor) -> str | None:
    """Why the CUDA kernels cannot take these planes (auto then picks another backend), or None. The
    backward keeps T*(h+w) rows of 16-byte vectors of float32 sums in shared memory."""
    _, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    if c > MAX_CHANNELS_CUDA:
        return f"its kernels take at most {MAX_CHANNELS_CUDA} channels, got C={c}"
    row_bytes = 16 // p_xy.element_size() * 4
    if t * (h + w) * row_bytes > MAX_SUM_SMEM_CUDA:
        return (f"its backward needs {t * (h + w) * row_bytes} B of shared memory for T*(h+w) = {t * (h + w)} "
                f"(limit {MAX_SUM_SMEM_CUDA})")
    return None


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _volume(p_xy: Tensor, p_yt: Tensor, p_xt: Tensor, cdt: torch.dtype) -> Tensor:
    """(B, T, h, w, C) broadcast sum in `cdt`."""
    return p_xy.to(cdt)[:, None] + p_yt.to(cdt)[:, :, None] + p_xt.to(cdt)[:, :, :, None]


def triplane_sum_reference(p_xy: Tensor, p_yt: Tensor, p_xt: Tensor, norm_weight: Optional[Tensor] = None,
                           norm_bias: Optional[Tensor] = None,
                           eps: float = 1e-5) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The plainest correct version: (V, Y, mean, rstd); V, Y (B, T*h*w, C) in the planes' dtype,
    mean/rstd (B, T*h*w) float32 (float64 for float64). Without norm weights Y, mean, rstd are empty."""
    cdt = _compute_dtype(p_xy)
    vol = _volume(p_xy, p_yt, p_xt, cdt).flatten(1, 3)
    if norm_weight is None:  # distinct empty tensors: custom-op outputs may not alias each other
        return vol.to(p_xy.dtype), p_xy.new_empty(0), vol.new_empty(0), vol.new_empty(0)
    y, mean, rstd = layernorm_reference(vol, norm_weight, norm_bias, eps)
    return vol.to(p_xy.dtype), y.to(p_xy.dtype), mean, rstd


def triplane_sum_backward_reference(dv: Tensor, dy: Optional[Tensor], p_xy: Tensor, p_yt: Tensor, p_xt: Tensor,
                                    norm_weight: Optional[Tensor], mean: Tensor,
                                    rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Closed-form (dP_xy, dP_yt, dP_xt, dnorm_weight, dnorm_bias) in the statistics' precision."""
    cdt = _compute_dtype(p_xy)
    b, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    g = dv.to(cdt).reshape(b, t, h, w, c)
    dgamma = dbeta = torch.zeros(c, dtype=cdt, device=dv.device)
    if dy is not None:
        vol = _volume(p_xy, p_yt, p_xt, cdt)
        d_ln, dgamma, dbeta = layernorm_backward_reference(vol, dy.reshape(b, t, h, w, c), norm_weight,
                                                           mean.reshape(b, t, h, w), rstd.reshape(b, t, h, w))
        g = g + d_ln
    return g.sum(1), g.sum(2), g.sum(3), dgamma, dbeta


# ---- backends: forward(p_xy, p_yt, p_xt, gamma, beta, eps) -> (V, Y, mean, rstd)

def _cuda_forward(p_xy, p_yt, p_xt, norm_weight, norm_bias, eps):
    p_xy, p_yt, p_xt = p_xy.contiguous(), p_yt.contiguous(), p_xt.contiguous()
    b, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    g, bt = _launch.layernorm_weights(norm_weight, norm_bias)
    v = p_xy.new_empty((b, t * h * w, c))
    y, mean, rstd = _launch.layernorm_outputs(v, (b, t * h * w), g is not None)
    _launch.run_cuda(_ext._C.triplane_decode_fwd, v.device, (p_xy, p_yt, p_xt, g, bt, v, y, mean, rstd), float(eps))
    return _launch.unfused_outputs(v) if g is None else (v, y, mean, rstd)


def _cuda_backward(dv, dy, p_xy, p_yt, p_xt, norm_weight, mean, rstd):
    p_xy, p_yt, p_xt = p_xy.contiguous(), p_yt.contiguous(), p_xt.contiguous()
    dv = dv.contiguous().to(p_xy.dtype)
    b, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    fused = dy is not None
    dy = dy.contiguous().to(p_xy.dtype) if fused else None
    g = norm_weight.float().contiguous() if fused else None
    f32 = dict(device=dv.device, dtype=torch.float32)
    d_xy, d_yt, d_xt = (torch.empty((b, h, w, c), **f32), torch.empty((b, t, w, c), **f32),
                        torch.empty((b, t, h, c), **f32))
    scalars = torch.empty((2, b, t * h * w), **f32) if fused else None
    parts = torch.empty((2, b, c), **f32) if fused else None
    ln_rows = (mean, rstd, scalars[0], scalars[1]) if fused else (None,) * 4
    ln_parts = (parts[0], parts[1]) if fused else (None, None)
    _launch.run_cuda(_ext._C.triplane_decode_bwd, dv.device,
                     (dv, dy, p_xy, p_yt, p_xt, g, *ln_rows, d_xy, d_yt, d_xt, *ln_parts))
    if not fused:
        zero = torch.zeros(c, **f32)
        return d_xy, d_yt, d_xt, zero, zero
    return d_xy, d_yt, d_xt, parts[0].sum(0), parts[1].sum(0)


_triton_forward, _triton_backward = _launch.triton_backend("triplane_decode")
_FORWARD = {"reference": triplane_sum_reference, "triton": _triton_forward, "cuda": _cuda_forward}
_BACKWARD = {"reference": triplane_sum_backward_reference, "triton": _triton_backward, "cuda": _cuda_backward}


# ---- custom ops

@torch.library.custom_op("pvdm::triplane_sum", mutates_args=())
def _sum_op(p_xy: Tensor, p_yt: Tensor, p_xt: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor],
            eps: float, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    v, y, mean, rstd = _FORWARD[backend](p_xy, p_yt, p_xt, norm_weight, norm_bias, eps)
    return v, y, mean, rstd


@_sum_op.register_fake
def _(p_xy, p_yt, p_xt, norm_weight, norm_bias, eps, backend):
    b, h, w, c = p_xy.shape
    n = p_yt.shape[1] * h * w
    v = p_xy.new_empty((b, n, c))
    cdt = _compute_dtype(p_xy)
    if norm_weight is None:
        return v, p_xy.new_empty(0), p_xy.new_empty(0, dtype=cdt), p_xy.new_empty(0, dtype=cdt)
    stats = p_xy.new_empty((b, n), dtype=cdt)
    return v, torch.empty_like(v), stats, torch.empty_like(stats)


@torch.library.custom_op("pvdm::triplane_sum_backward", mutates_args=())
def _sum_bwd_op(dv: Tensor, dy: Optional[Tensor], p_xy: Tensor, p_yt: Tensor, p_xt: Tensor,
                norm_weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    d_xy, d_yt, d_xt, dg, db = _BACKWARD[backend](dv, dy, p_xy, p_yt, p_xt, norm_weight, mean, rstd)
    nw = norm_weight if norm_weight is not None else p_xy.new_empty(0)
    if norm_weight is None:
        dg, db = nw.clone(), nw.clone()
    return (d_xy.to(p_xy.dtype), d_yt.to(p_yt.dtype), d_xt.to(p_xt.dtype), dg.to(nw.dtype), db.to(nw.dtype))


@_sum_bwd_op.register_fake
def _(dv, dy, p_xy, p_yt, p_xt, norm_weight, mean, rstd, backend):
    nw = norm_weight if norm_weight is not None else p_xy.new_empty(0)
    return (torch.empty_like(p_xy, memory_format=torch.contiguous_format),
            torch.empty_like(p_yt, memory_format=torch.contiguous_format),
            torch.empty_like(p_xt, memory_format=torch.contiguous_format), torch.empty_like(nw),
            torch.empty_like(nw))


def _setup_context(ctx, inputs, output):
    p_xy, p_yt, p_xt, norm_weight, norm_bias, eps, backend = inputs
    _, _, mean, rstd = output
    # V is not saved: the backward recomputes it from the (8x smaller) planes.
    ctx.save_for_backward(p_xy, p_yt, p_xt, norm_weight, mean, rstd)
    ctx.backend = backend
    ctx.fused = norm_weight is not None
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dv, dy, _dmean, _drstd):
    p_xy, p_yt, p_xt, norm_weight, mean, rstd = ctx.saved_tensors
    if dv is None:
        dv = p_xy.new_zeros((p_xy.shape[0], p_yt.shape[1] * p_xy.shape[1] * p_xy.shape[2], p_xy.shape[3]))
    if ctx.fused and dy is None:
        dy = torch.zeros_like(dv)
    d_xy, d_yt, d_xt, dg, db = _sum_bwd_op(dv, dy if ctx.fused else None, p_xy, p_yt, p_xt, norm_weight, mean,
                                           rstd, ctx.backend)
    if not ctx.fused:
        return d_xy, d_yt, d_xt, None, None, None, None
    return d_xy, d_yt, d_xt, dg, db, None, None


_sum_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public functions

def _check_planes(p_xy: Tensor, p_yt: Tensor, p_xt: Tensor, norm_weight: Optional[Tensor],
                  norm_bias: Optional[Tensor]) -> None:
    if p_xy.dim() != 4 or p_yt.dim() != 4 or p_xt.dim() != 4:
        raise ValueError("triplane_sum: planes must be channels-last 4D tensors p_xy (B, h, w, C), "
                         f"p_yt (B, T, w, C), p_xt (B, T, h, C); got {tuple(p_xy.shape)}, {tuple(p_yt.shape)}, "
                         f"{tuple(p_xt.shape)}")
    b, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    for name, p, shape in (("p_yt", p_yt, (b, t, w, c)), ("p_xt", p_xt, (b, t, h, c))):
        if tuple(p.shape) != shape:
            raise ValueError(f"triplane_sum: {name} must have shape {shape} to match p_xy {tuple(p_xy.shape)} "
                             f"and T={t}, got {tuple(p.shape)}")
        if p.dtype != p_xy.dtype or p.device != p_xy.device:
            raise ValueError(f"triplane_sum: {name} is {p.dtype} on {p.device} but p_xy is {p_xy.dtype} on "
                             f"{p_xy.device}; pass all planes in one dtype on one device")
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("triplane_sum: pass both norm_weight and norm_bias, or neither")
    for name, p in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if p is not None and (tuple(p.shape) != (c,) or p.device != p_xy.device):
            raise ValueError(f"triplane_sum: {name} must have shape ({c},) on {p_xy.device}, got "
                             f"{tuple(p.shape)} on {p.device}")


def triplane_sum(p_xy: Tensor, p_yt: Tensor, p_xt: Tensor, *, norm_weight: Optional[Tensor] = None,
                 norm_bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor | Tuple[Tensor, Tensor]:
    """V (B, T*h*w, C), tokens ordered (t, row, col), from channels-last projected planes
    p_xy (B, h, w, C), p_yt (B, T, w, C), p_xt (B, T, h, C); with norm weights, (V, LayerNorm(V))."""
    _check_planes(p_xy, p_yt, p_xt, norm_weight, norm_bias)
    backend = dispatch.select(SPEC, p_xy, {"cuda": _cuda_limit(p_xy, p_yt)})
    v, y, _, _ = _sum_op(p_xy, p_yt, p_xt, norm_weight, norm_bias, float(eps), backend)
    return v if norm_weight is None else (v, y)


def _split(latent: Tensor, grid: Sequence[int]) -> list[Tensor]:
    """Flat (B, E, h*w + T*w + T*h) -> xy (B,E,h,w), yt (B,E,T,w), xt (B,E,T,h). Local, because ops sit
    below models (pvdm_fast.models.triplane holds the same layout for model code)."""
    try:
        t, h, w = (operator.index(s) for s in grid)  # ints, numpy ints; not 3.5 (int() would truncate)
    except (TypeError, ValueError):
        t = h = w = 0
    if len(grid) != 3 or min(t, h, w) < 1 or any(isinstance(s, bool) for s in grid):
        raise ValueError(f"triplane_decode: grid must be three positive integers (T, h, w), got {tuple(grid)}")
    shapes = ((h, w), (t, w), (t, h))
    if latent.shape[-1] != h * w + t * w + t * h:
        raise ValueError(f"triplane_decode: latent length {latent.shape[-1]} does not match grid (T={t}, h={h}, "
                         f"w={w}): expected h*w + T*w + T*h = {h * w + t * w + t * h}")
    parts = torch.split(latent, [r * c for r, c in shapes], dim=-1)
    return [p.unflatten(-1, shape) for p, shape in zip(parts, shapes)]


def project_planes(latent: Tensor, grid: Sequence[int], weights: Sequence[Tensor],
                   biases: Sequence[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """The post projections on the small planes: flat latent (B, E, L) -> channels-last P_xy, P_yt, P_xt.
    weights: three (C, E) or (C, E, 1, 1) conv weights in the order xy, yt, xt; biases: three (C,)."""
    if len(weights) != 3 or len(biases) != 3:
        raise ValueError("triplane_decode: pass three weights and three biases in the order xy, yt, xt")
    planes = _split(latent, grid)
    out = []
    for name, plane, wt, bias in zip(("xy", "yt", "xt"), planes, weights, biases):
        w2 = wt.reshape(wt.shape[0], -1)
        if w2.shape[1] != latent.shape[1] or tuple(bias.shape) != (wt.shape[0],):
            raise ValueError(f"triplane_decode: post_{name} weight {tuple(wt.shape)} / bias {tuple(bias.shape)} "
                             f"do not map {latent.shape[1]} latent channels to C channels")
        for what, p in (("weight", wt), ("bias", bias)):
            if p.device != latent.device or (p.dtype != latent.dtype and not torch.is_autocast_enabled(
                    latent.device.type)):
                raise ValueError(f"triplane_decode: post_{name} {what} is {p.dtype} on {p.device} but the latent "
                                 f"is {latent.dtype} on {latent.device}; pass them in one dtype on one device")
        out.append(F.linear(plane.permute(0, 2, 3, 1), w2, bias).contiguous())
    return out[0], out[1], out[2]


def triplane_decode(latent: Tensor, grid: Sequence[int], weights: Sequence[Tensor], biases: Sequence[Tensor], *,
                    norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                    eps: float = 1e-5) -> Tensor | Tuple[Tensor, Tensor]:
    """The decoder input from a flat latent (B, E, h*w + T*w + T*h), planes in the order xy, yt, xt.

    grid: (T, h, w). weights/biases: the three post 1x1 convs (xy, yt, xt), (C, E[, 1, 1]) and (C,).
    Returns V (B, T*h*w, C), tokens ordered (t, row, col); with norm_weight/norm_bias (the first decoder
    block's LayerNorm), returns (V, LayerNorm(V)).
    """
    if latent.dim() != 3:
        raise ValueError(f"triplane_decode: latent must be flat (B, E, L), got shape {tuple(latent.shape)}")
    p_xy, p_yt, p_xt = project_planes(latent, grid, weights, biases)
    return triplane_sum(p_xy, p_yt, p_xt, norm_weight=norm_weight, norm_bias=norm_bias, eps=eps)


def triplane_decode_reference(latent: Tensor, grid: Sequence[int], weights: Sequence[Tensor],
                              biases: Sequence[Tensor], *, norm_weight: Optional[Tensor] = None,
                              norm_bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor | Tuple[Tensor, Tensor]:
    """The unfused spec path (1x1 conv per plane, broadcast sum, flatten, LayerNorm) for tests and benchmarks."""
    xy, yt, xt = _split(latent, grid)
    convs = [F.conv2d(p, wt.reshape(wt.shape[0], -1, 1, 1), bias) for p, wt, bias in zip((xy, yt, xt), weights, biases)]
    vol = convs[0][:, :, None] + convs[1][:, :, :, None] + convs[2][:, :, :, :, None]  # (B, C, T, h, w)
    v = vol.flatten(2).transpose(1, 2)
    if norm_weight is None:
        return v
    return v, F.layer_norm(v, (v.shape[-1],), norm_weight, norm_bias, eps)
