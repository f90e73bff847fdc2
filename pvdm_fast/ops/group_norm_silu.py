"""Packed-triplane GroupNorm + FiLM scale/shift + SiLU (the UNet's normalisation, ADM ResBlock).

x is (B, C, L) where L concatenates several planes (segments, e.g. [h*w, T*w, T*h]); statistics
are taken per (batch, group, segment), so each plane is normalised as if alone, in one launch.
y = silu((GN(x) * weight + bias) * (1 + scale) + shift), statistics in float32 for every dtype.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pvdm_fast.ops import _ext, dispatch

_LOW = (torch.float32, torch.float16, torch.bfloat16)
SPEC = dispatch.register(dispatch.OpSpec(
    "group_norm_silu",
    {"reference": _LOW + (torch.float64,), "triton": _LOW, "cuda": _LOW},
))


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_element(stat: Tensor, segments: Sequence[int], channels: int) -> Tensor:
    """(B, G, S) statistics -> (B, C, L) by repeating over each group's channels and segment."""
    b, g, _ = stat.shape
    lengths = torch.tensor(list(segments), device=stat.device)
    full = stat.repeat_interleave(lengths, dim=2, output_size=sum(segments))
    return full.repeat_interleave(channels // g, dim=1)


def _group_segment_mean(v: Tensor, segments: Sequence[int], groups: int) -> Tensor:
    """Mean of (B, C, L) over each (group, segment) region -> (B, G, S)."""
    b, c, _ = v.shape
    pieces = [p.reshape(b, groups, -1).mean(-1) for p in v.split(list(segments), dim=2)]
    return torch.stack(pieces, dim=-1)


def _film(h: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    if scale is not None:
        h = h * (1 + scale.to(h.dtype)[..., None])
    if shift is not None:
        h = h + shift.to(h.dtype)[..., None]
    return h


def group_norm_silu_reference(x: Tensor, weight: Tensor, bias: Tensor, scale: Optional[Tensor] = None,
                              shift: Optional[Tensor] = None, segments: Optional[Sequence[int]] = None,
                              num_groups: int = 32, eps: float = 1e-5,
                              apply_silu: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """The plainest correct version. x: (B, C, L) any float dtype; returns (y in x.dtype, mean, rstd),
    mean/rstd (B, G, S) in float32 (float64 for float64 input)."""
    segments = list(segments) if segments is not None else [x.shape[2]]
    cdt = _compute_dtype(x)
    xc = x.to(cdt)
    mean = _group_segment_mean(xc, segments, num_groups)
    centred = xc - _per_element(mean, segments, x.shape[1])
    var = _group_segment_mean(centred * centred, segments, num_groups)
    rstd = torch.rsqrt(var + eps)
    h = centred * _per_element(rstd, segments, x.shape[1])
    h = _film(h * weight.to(cdt)[:, None] + bias.to(cdt)[:, None], scale, shift)
    if apply_silu:
        h = F.silu(h)
    return h.to(x.dtype), mean, rstd


def group_norm_silu_backward_reference(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor,
                                       scale: Optional[Tensor], shift: Optional[Tensor], mean: Tensor,
                                       rstd: Tensor, segments: Sequence[int], num_groups: int,
                                       apply_silu: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Closed-form gradients (dx, dweight, dbias, dscale, dshift) in the statistics' precision."""
    cdt, c = mean.dtype, x.shape[1]
    rstd_full = _per_element(rstd, segments, c)
    xhat = (x.to(cdt) - _per_element(mean, segments, c)) * rstd_full
    w = weight.to(cdt)[:, None]
    a = xhat * w + bias.to(cdt)[:, None]
    mul = 1 + scale.to(cdt)[..., None] if scale is not None else torch.ones_like(a[:, :, :1])
    dz = dy.to(cdt)
    if apply_silu:
        z = _film(a, scale, shift)
        sig = torch.sigmoid(z)
        dz = dz * sig * (1 + z * (1 - sig))
    da = dz * mul
    dxhat = da * w
    m1 = _per_element(_group_segment_mean(dxhat, segments, num_groups), segments, c)
    m2 = _per_element(_group_segment_mean(dxhat * xhat, segments, num_groups), segments, c)
    dx = rstd_full * (dxhat - m1 - xhat * m2)
    return dx, (da * xhat).sum((0, 2)), da.sum((0, 2)), (dz * a).sum(2), dz.sum(2)


# ---- backends: forward(x, weight, bias, scale, shift, segments, groups, eps, silu) -> (y, mean, rstd)

def _cuda_forward(x, weight, bias, scale, shift, segments, groups, eps, apply_silu):
    x = x.contiguous()
    b, c, length = x.shape
    w, bi = weight.float().contiguous(), bias.float().contiguous()
    sc = scale.float().contiguous() if scale is not None else None
    sh = shift.float().contiguous() if shift is not None else None
    y = torch.empty_like(x)
    mean = x.new_empty((b, groups, len(segments)), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    with torch.cuda.device(x.device):
        _ext._C.gn_silu_fwd(x.data_ptr(), y.data_ptr(), w.data_ptr(), bi.data_ptr(),
                            sc.data_ptr() if sc is not None else 0, sh.data_ptr() if sh is not None else 0,
                            mean.data_ptr(), rstd.data_ptr(), b, c, length, groups, list(segments), eps,
                            apply_silu, _ext.DTYPE_CODES[x.dtype], _ext.stream_handle(x.device))
    return y, mean, rstd


def _cuda_backward(dy, x, weight, bias, scale, shift, mean, rstd, segments, groups, apply_silu):
    x, dy = x.contiguous(), dy.contiguous().to(x.dtype)
    b, c, length = x.shape
    w, bi = weight.float().contiguous(), bias.float().contiguous()
    sc = scale.float().contiguous() if scale is not None else None
    sh = shift.float().contiguous() if shift is not None else None
    dx = torch.empty_like(x)
    parts = x.new_empty((4, b, c, len(segments)), dtype=torch.float32)
    with torch.cuda.device(x.device):
        _ext._C.gn_silu_bwd(dy.data_ptr(), x.data_ptr(), w.data_ptr(), bi.data_ptr(),
                            sc.data_ptr() if sc is not None else 0, sh.data_ptr() if sh is not None else 0,
                            mean.data_ptr(), rstd.data_ptr(), dx.data_ptr(), parts[0].data_ptr(),
                            parts[1].data_ptr(), parts[2].data_ptr(), parts[3].data_ptr(), b, c, length, groups,
                            list(segments), apply_silu, _ext.DTYPE_CODES[x.dtype], _ext.stream_handle(x.device))
    return dx, parts[0].sum((0, 2)), parts[1].sum((0, 2)), parts[2].sum(2), parts[3].sum(2)


def _triton_forward(*args):
    from pvdm_fast.ops.triton.group_norm_silu import forward
    return forward(*args)


def _triton_backward(*args):
    from pvdm_fast.ops.triton.group_norm_silu import backward
    return backward(*args)


def _reference_backward(dy, x, weight, bias, scale, shift, mean, rstd, segments, groups, apply_silu):
    return group_norm_silu_backward_reference(dy, x, weight, bias, scale, shift, mean, rstd, segments, groups,
                                              apply_silu)


_FORWARD = {"reference": group_norm_silu_reference, "triton": _triton_forward, "cuda": _cuda_forward}
_BACKWARD = {"reference": _reference_backward, "triton": _triton_backward, "cuda": _cuda_backward}


# ---- custom ops

@torch.library.custom_op("pvdm::group_norm_silu", mutates_args=())
def _gn_op(x: Tensor, weight: Tensor, bias: Tensor, scale: Optional[Tensor], shift: Optional[Tensor],
           segments: List[int], num_groups: int, eps: float, apply_silu: bool,
           backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = _FORWARD[backend](x, weight, bias, scale, shift, segments, num_groups, eps, apply_silu)
    return y, mean, rstd


@_gn_op.register_fake
def _(x, weight, bias, scale, shift, segments, num_groups, eps, apply_silu, backend):
    stats = x.new_empty((x.shape[0], num_groups, len(segments)), dtype=_compute_dtype(x))
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.custom_op("pvdm::group_norm_silu_backward", mutates_args=())
def _gn_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, scale: Optional[Tensor],
               shift: Optional[Tensor], mean: Tensor, rstd: Tensor, segments: List[int], num_groups: int,
               apply_silu: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dscale, dshift = _BACKWARD[backend](dy, x, weight, bias, scale, shift, mean, rstd, segments,
                                                    num_groups, apply_silu)
    film_dtype = (scale if scale is not None else x).dtype, (shift if shift is not None else x).dtype
    return (dx.to(x.dtype).contiguous(), dw.to(weight.dtype), db.to(bias.dtype), dscale.to(film_dtype[0]),
            dshift.to(film_dtype[1]))


@_gn_bwd_op.register_fake
def _(dy, x, weight, bias, scale, shift, mean, rstd, segments, num_groups, apply_silu, backend):
    b, c = x.shape[:2]
    film = x.new_empty((b, c), dtype=(scale if scale is not None else x).dtype)
    film2 = x.new_empty((b, c), dtype=(shift if shift is not None else x).dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            torch.empty_like(bias), film, film2)


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, segments, num_groups, eps, apply_silu, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.config = (segments, num_groups, apply_silu, backend)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    segments, num_groups, apply_silu, backend = ctx.config
    dx, dw, db, dscale, dshift = _gn_bwd_op(dy, x, weight, bias, scale, shift, mean, rstd, segments, num_groups,
                                            apply_silu, backend)
    return (dx, dw, db, dscale if scale is not None else None, dshift if shift is not None else None,
            None, None, None, None, None)


_gn_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function

def _check(x: Tensor, weight: Tensor, bias: Tensor, scale: Optional[Tensor], shift: Optional[Tensor],
           segments: List[int], num_groups: int) -> None:
    b, c, length = x.shape
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"group_norm_silu: channels ({c}) must be a multiple of num_groups ({num_groups})")
    if not segments or any(s <= 0 for s in segments) or sum(segments) != length:
        raise ValueError(f"group_norm_silu: segments {segments} must be positive and sum to the length {length}")
    for name, t, shape in (("weight", weight, (c,)), ("bias", bias, (c,)), ("scale", scale, (b, c)),
                           ("shift", shift, (b, c))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"group_norm_silu: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t is not None and t.device != x.device:
            raise ValueError(f"group_norm_silu: {name} is on {t.device} but x is on {x.device}")


def group_norm_silu(x: Tensor, weight: Tensor, bias: Tensor, *, scale: Optional[Tensor] = None,
                    shift: Optional[Tensor] = None, segments: Optional[Sequence[int]] = None,
                    num_groups: int = 32, eps: float = 1e-5, apply_silu: bool = True) -> Tensor:
    """GroupNorm with statistics per segment, then `* weight + bias`, `* (1 + scale) + shift`, SiLU.

    x: (B, C, L) or (B, C, *spatial) (flattened to L), fp32/fp16/bf16 (float64 on the reference);
    weight, bias: (C,); scale, shift: (B, C) or None; segments: lengths summing to L (default [L]).
    """
    if x.dim() < 3:
        raise ValueError(f"group_norm_silu: x must be (B, C, L) or (B, C, *spatial), got shape {tuple(x.shape)}")
    shape = x.shape
    if x.numel() == 0:
        raise ValueError(f"group_norm_silu: empty input of shape {tuple(shape)}; every dimension must be positive")
    x3 = x.reshape(shape[0], shape[1], -1)
    segs = [int(s) for s in segments] if segments is not None else [x3.shape[2]]
    _check(x3, weight, bias, scale, shift, segs, num_groups)
    backend = dispatch.select(SPEC, x3)
    y, _, _ = _gn_op(x3, weight, bias, scale, shift, segs, num_groups, float(eps), bool(apply_silu), backend)
    return y.reshape(shape)
