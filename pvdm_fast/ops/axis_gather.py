"""Axis gather: the input side of the autoencoder's axis projections (3D token grid -> per-axis sequences).

For one axis of the encoder grid x (B, T*h*w, C), tokens ordered (t, row, col), the projection
transformer sees, for every line of the grid along that axis, the line's tokens followed by one
learned token appended at the end, plus a learned absolute position embedding of length axis+1:

- "xy": lines over t for each (b, row, col) -> S (B*h*w, T+1, C)
- "yt": lines over rows for each (b, t, col) -> S (B*T*w, h+1, C)
- "xt": lines over cols for each (b, t, row) -> S (B*T*h, w+1, C)

`pvdm::axis_gather` writes S straight from x (no permuted copy of the grid, no concatenation) and,
given the transformer's first LayerNorm weights, LayerNorm(S) in the same pass. The backward scatters
dS (+ the LayerNorm backward of dY) back to the grid layout and sums the position-embedding and
appended-token gradients from per-block partials. Statistics are float32 (float64 on the reference).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pvdm_fast.ops import _ext, _launch, dispatch
from pvdm_fast.ops._layernorm import layernorm_backward_reference, layernorm_reference

_LOW = (torch.float32, torch.float16, torch.bfloat16)
SPEC = dispatch.register(dispatch.OpSpec(
    "axis_gather",
    {"reference": _LOW + (torch.float64,), "triton": _LOW, "cuda": _LOW},
))
AXES = ("xy", "yt", "xt")
MAX_CHANNELS_CUDA = 1024  # kernels/axis_gather.h: kAxisMaxChannels


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def axis_geometry(grid: Sequence[int], axis: int) -> Tuple[int, int, int, int, int, int]:
    """(A, O1, O2, s1, s2, sj) for `axis` (0 xy, 1 yt, 2 xt) of a (T, h, w) grid: line m = (b, o1, o2)
    with o1 < O1, o2 < O2, and position j < A of that line is token b*T*h*w + o1*s1 + o2*s2 + j*sj."""
    t, h, w = (int(s) for s in grid)
    return ((t, h, w, w, 1, h * w), (h, t, w, h * w, 1, w), (w, t, h, h * w, w, 1))[axis]


def _lines(x: Tensor, grid: Sequence[int], axis: int) -> Tensor:
    """(B, T*h*w, C) -> (M, A, C), the lines along `axis` (a permuted copy: reference only)."""
    t, h, w = grid
    vol = x.reshape(x.shape[0], t, h, w, x.shape[-1])
    if axis == 0:
        vol = vol.permute(0, 2, 3, 1, 4)
    elif axis == 1:
        vol = vol.permute(0, 1, 3, 2, 4)
    return vol.reshape(-1, vol.shape[3], vol.shape[4])


def _unlines(lines: Tensor, batch: int, grid: Sequence[int], axis: int) -> Tensor:
    """Inverse of `_lines`: (M, A, C) -> (B, T*h*w, C)."""
    t, h, w = grid
    c = lines.shape[-1]
    if axis == 0:
        vol = lines.reshape(batch, h, w, t, c).permute(0, 3, 1, 2, 4)
    elif axis == 1:
        vol = lines.reshape(batch, t, w, h, c).permute(0, 1, 3, 2, 4)
    else:
        vol = lines.reshape(batch, t, h, w, c)
    return vol.reshape(batch, t * h * w, c)


def _sequences(x: Tensor, token: Tensor, pos: Tensor, grid: Sequence[int], axis: int, cdt: torch.dtype) -> Tensor:
    lines = _lines(x.to(cdt), grid, axis)
    tok = token.to(cdt).reshape(1, 1, -1).expand(lines.shape[0], 1, lines.shape[2])
    return torch.cat([lines, tok], dim=1) + pos.to(cdt)


def axis_gather_reference(x: Tensor, token: Tensor, pos: Tensor, norm_weight: Optional[Tensor],
                          norm_bias: Optional[Tensor], grid: Sequence[int], axis: int,
                          eps: float = 1e-5) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(S, Y, mean, rstd): S, Y (M, A+1, C) in x's dtype, mean/rstd (M, A+1) float32 (float64 for
    float64). token (C,), pos (A+1, C). Without norm weights Y, mean and rstd are empty."""
    cdt = _compute_dtype(x)
    s = _sequences(x, token, pos, grid, axis, cdt)
    if norm_weight is None:  # distinct empty tensors: custom-op outputs may not alias each other
        return s.to(x.dtype), x.new_empty(0), s.new_empty(0), s.new_empty(0)
    y, mean, rstd = layernorm_reference(s, norm_weight, norm_bias, eps)
    return s.to(x.dtype), y.to(x.dtype), mean, rstd


def axis_gather_backward_reference(ds: Tensor, dy: Optional[Tensor], x: Tensor, token: Tensor, pos: Tensor,
                                   norm_weight: Optional[Tensor], mean: Tensor, rstd: Tensor, grid: Sequence[int],
                                   axis: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Closed-form (dx, dtoken, dpos, dnorm_weight, dnorm_bias) in the statistics' precision."""
    cdt = _compute_dtype(x)
    g = ds.to(cdt)
    c = x.shape[-1]
    dgamma = dbeta = torch.zeros(c, dtype=cdt, device=x.device)
    if dy is not None:
        s = _sequences(x, token, pos, grid, axis, cdt)
        d_ln, dgamma, dbeta = layernorm_backward_reference(s, dy, norm_weight, mean, rstd)
        g = g + d_ln
    dpos = g.sum(0)
    return _unlines(g[:, :-1], x.shape[0], grid, axis), dpos[-1].clone(), dpos, dgamma, dbeta


# ---- backends: forward(x, token, pos, gamma, beta, grid, axis, eps) -> (S, Y, mean, rstd)

def _blocks(lines: int) -> int:
    """Lines per CUDA block: enough blocks to fill a GPU, few enough partial sums to stay small."""
    return max(8, min(256, -(-lines // 128)))


def _bwd_lines(lines: int, positions: int) -> int:
    """Lines per CUDA backward block. Each block writes one float32 row of partial sums (pos, and the
    LayerNorm weight and bias) per position, so blocks hold as many lines as still leave about 1024
    blocks in all: at the base time axis 68 lines (61 x 17 blocks, 5 MB of partial sums, where 32-line
    blocks wrote 10 MB). At least 8 (a warp each), at most 256."""
    per, _ = _launch.blocks_per_program(lines, programs=max(1, 1024 // positions), most=256)
    return max(8, per)


def _cuda_forward(x, token, pos, norm_weight, norm_bias, grid, axis, eps):
    x = x.contiguous()
    a, o1, o2 = axis_geometry(grid, axis)[:3]
    m, c = x.shape[0] * o1 * o2, x.shape[-1]
    tok, p = token.float().contiguous(), pos.float().contiguous()
    g, bt = _launch.layernorm_weights(norm_weight, norm_bias)
    s = x.new_empty((m, a + 1, c))
    y, mean, rstd = _launch.layernorm_outputs(s, (m, a + 1), g is not None)
    _launch.run_cuda(_ext._C.axis_gather_fwd, x.device, (x, tok, p, g, bt, s, y, mean, rstd), list(grid), axis,
                     _blocks(m), float(eps))
    return _launch.unfused_outputs(s) if g is None else (s, y, mean, rstd)


def _cuda_backward(ds, dy, x, token, pos, norm_weight, mean, rstd, grid, axis):
    x = x.contiguous()
    a, o1, o2 = axis_geometry(grid, axis)[:3]
    m, c = x.shape[0] * o1 * o2, x.shape[-1]
    ds = ds.contiguous().to(x.dtype)
    fused = dy is not None
    dy = dy.contiguous().to(x.dtype) if fused else None
    tok, p = token.float().contiguous(), pos.float().contiguous()
    g = norm_weight.float().contiguous() if fused else None
    lines = _bwd_lines(m, a + 1)
    nb = -(-m // lines)
    dx = torch.empty_like(x)
    parts = torch.empty((3 if fused else 1, nb, a + 1, c), device=x.device, dtype=torch.float32)
    ln_rows = (mean, rstd) if fused else (None, None)
    ln_parts = (parts[1], parts[2]) if fused else (None, None)
    _launch.run_cuda(_ext._C.axis_gather_bwd, x.device, (ds, dy, x, tok, p, g, *ln_rows, dx, parts[0], *ln_parts),
                     list(grid), axis, lines)
    dpos = parts[0].sum(0)
    if not fused:
        zero = torch.zeros(c, device=x.device, dtype=torch.float32)
        return dx, dpos[-1].clone(), dpos, zero, zero.clone()
    return dx, dpos[-1].clone(), dpos, parts[1].sum((0, 1)), parts[2].sum((0, 1))


_triton_forward, _triton_backward = _launch.triton_backend("axis_gather")
_FORWARD = {"reference": axis_gather_reference, "triton": _triton_forward, "cuda": _cuda_forward}
_BACKWARD = {"reference": axis_gather_backward_reference, "triton": _triton_backward, "cuda": _cuda_backward}


# ---- custom ops

@torch.library.custom_op("pvdm::axis_gather", mutates_args=())
def _gather_op(x: Tensor, token: Tensor, pos: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor],
               grid: List[int], axis: int, eps: float, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    s, y, mean, rstd = _FORWARD[backend](x, token, pos, norm_weight, norm_bias, grid, axis, eps)
    return s, y, mean, rstd


@_gather_op.register_fake
def _(x, token, pos, norm_weight, norm_bias, grid, axis, eps, backend):
    a, o1, o2 = axis_geometry(grid, axis)[:3]
    s = x.new_empty((x.shape[0] * o1 * o2, a + 1, x.shape[-1]))
    cdt = _compute_dtype(x)
    if norm_weight is None:
        return s, x.new_empty(0), x.new_empty(0, dtype=cdt), x.new_empty(0, dtype=cdt)
    stats = x.new_empty(s.shape[:2], dtype=cdt)
    return s, torch.empty_like(s), stats, torch.empty_like(stats)


@torch.library.custom_op("pvdm::axis_gather_backward", mutates_args=())
def _gather_bwd_op(ds: Tensor, dy: Optional[Tensor], x: Tensor, token: Tensor, pos: Tensor,
                   norm_weight: Optional[Tensor], mean: Tensor, rstd: Tensor, grid: List[int], axis: int,
                   backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, dtok, dpos, dg, db = _BACKWARD[backend](ds, dy, x, token, pos, norm_weight, mean, rstd, grid, axis)
    nw = norm_weight if norm_weight is not None else x.new_empty(0)
    if norm_weight is None:
        dg, db = nw.clone(), nw.clone()
    return (dx.to(x.dtype).contiguous(), dtok.to(token.dtype), dpos.to(pos.dtype), dg.to(nw.dtype),
            db.to(nw.dtype))


@_gather_bwd_op.register_fake
def _(ds, dy, x, token, pos, norm_weight, mean, rstd, grid, axis, backend):
    nw = norm_weight if norm_weight is not None else x.new_empty(0)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(token),
            torch.empty_like(pos), torch.empty_like(nw), torch.empty_like(nw))


def _setup_context(ctx, inputs, output):
    x, token, pos, norm_weight, norm_bias, grid, axis, eps, backend = inputs
    _, _, mean, rstd = output
    # S is not saved: the backward rebuilds the rows it needs from x, token and pos.
    ctx.save_for_backward(x, token, pos, norm_weight, mean, rstd)
    ctx.config = (grid, axis, backend, norm_weight is not None)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, ds, dy, _dmean, _drstd):
    x, token, pos, norm_weight, mean, rstd = ctx.saved_tensors
    grid, axis, backend, fused = ctx.config
    if ds is None:
        a, o1, o2 = axis_geometry(grid, axis)[:3]
        ds = x.new_zeros((x.shape[0] * o1 * o2, a + 1, x.shape[-1]))
    if fused and dy is None:
        dy = torch.zeros_like(ds)
    dx, dtok, dpos, dg, db = _gather_bwd_op(ds, dy if fused else None, x, token, pos, norm_weight, mean, rstd,
                                            grid, axis, backend)
    return dx, dtok, dpos, (dg if fused else None), (db if fused else None), None, None, None, None


_gather_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public functions

def _axis_index(axis: str | int) -> int:
    if isinstance(axis, str) and axis in AXES:
        return AXES.index(axis)
    if isinstance(axis, int) and 0 <= axis < 3:
        return axis
    raise ValueError(f"axis_gather: axis must be one of {AXES} (or 0, 1, 2), got {axis!r}")


def axis_gather(x: Tensor, grid: Sequence[int], axis: str | int, token: Tensor, pos: Tensor, *,
                norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                eps: float = 1e-5) -> Tensor | Tuple[Tensor, Tensor]:
    """The projection transformer's input for one axis of the encoder grid.

    x: (B, T*h*w, C), tokens ordered (t, row, col); grid: (T, h, w); axis: "xy" (lines over t,
    ordered (b, row, col)), "yt" (lines over rows, ordered (b, t, col)) or "xt" (lines over cols,
    ordered (b, t, row)); token: the appended learned token, C values (e.g. (1, 1, C)); pos: the position
    embedding, (A+1) * C values (e.g. (1, A+1, C)), A the axis length. Returns S (lines, A+1, C); with
    norm_weight/norm_bias (the transformer's first LayerNorm), returns (S, LayerNorm(S)).
    """
    ax = _axis_index(axis)
    grid = [int(s) for s in grid]
    if len(grid) != 3 or min(grid) <= 0:
        raise ValueError(f"axis_gather: grid must be three positive sizes (T, h, w), got {grid}")
    if x.dim() != 3 or x.shape[1] != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"axis_gather: x must be (B, T*h*w, C) with T*h*w = {grid[0] * grid[1] * grid[2]} for "
                         f"grid {grid}, got shape {tuple(x.shape)}")
    c = x.shape[-1]
    a = axis_geometry(grid, ax)[0]
    if token.numel() != c:
        raise ValueError(f"axis_gather: token must hold C={c} values, got shape {tuple(token.shape)}")
    if pos.numel() != (a + 1) * c:
        raise ValueError(f"axis_gather: pos must hold (A+1)*C = {a + 1}*{c} values for axis {AXES[ax]!r} "
                         f"(A={a}), got shape {tuple(pos.shape)}")
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("axis_gather: pass both norm_weight and norm_bias, or neither")
    for name, p, n in (("token", token, c), ("pos", pos, (a + 1) * c), ("norm_weight", norm_weight, c),
                       ("norm_bias", norm_bias, c)):
        if p is not None and (p.numel() != n or p.device != x.device):
            raise ValueError(f"axis_gather: {name} must hold {n} values on {x.device}, got shape "
                             f"{tuple(p.shape)} on {p.device}")
    limit = None
    if c > MAX_CHANNELS_CUDA:
        limit = f"its kernels take at most {MAX_CHANNELS_CUDA} channels, got C={c}"
    elif a + 1 > 65535:
        limit = f"the axis length + 1 = {a + 1} must fit a launch grid dimension (65535)"
    backend = dispatch.select(SPEC, x, {"cuda": limit})
    s, y, _, _ = _gather_op(x, token.reshape(c), pos.reshape(a + 1, c), norm_weight, norm_bias, grid, ax,
                            float(eps), backend)
    return s if norm_weight is None else (s, y)


def axis_gather_unfused(x: Tensor, grid: Sequence[int], axis: str | int, token: Tensor, pos: Tensor, *,
                        norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                        eps: float = 1e-5) -> Tensor | Tuple[Tensor, Tensor]:
    """The plain torch path (permute, cat, add, LayerNorm) that `axis_gather` replaces; for benchmarks."""
    ax = _axis_index(axis)
    c = x.shape[-1]
    lines = _lines(x, grid, ax)
    s = torch.cat([lines, token.reshape(1, 1, c).expand(lines.shape[0], 1, c).to(x.dtype)], 1)
    s = s + pos.reshape(1, -1, c).to(x.dtype)
    if norm_weight is None:
        return s
    return s, F.layer_norm(s, (c,), norm_weight, norm_bias, eps)
