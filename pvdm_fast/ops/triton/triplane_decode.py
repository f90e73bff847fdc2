"""Triton kernels for the triplane broadcast sum (+ fused LayerNorm); see pvdm_fast/ops/triplane_decode.py.

Forward: a program owns BLOCK_N tokens with all C channels (the LayerNorm needs whole rows) and gathers
the three plane rows of each token. Backward: with the LayerNorm, a row pass first turns dY into the
two per-token means the LayerNorm backward needs; then one program per (batch, channel chunk) walks
the whole volume once, row by row: dP_xt (sum over x) is a tile reduction, dP_xy (sum over t) stays
in registers across the t loop, dP_yt (sum over y) is accumulated in its float32 output, which only
this program touches, so no atomics are needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pvdm_fast.ops import _launch
from pvdm_fast.ops.triton._layernorm import layernorm_rows


@triton.jit
def _token_offsets(n, T, H, W, C):
    # Row offsets of the three plane rows that token n = ((b*T + t)*H + y)*W + x reads.
    x = n % W
    y = (n // W) % H
    bt = n // (W * H)  # b*T + t
    b = bt // T
    off_xy = ((b * H + y) * W + x) * C
    off_yt = (bt * W + x) * C
    off_xt = (bt * H + y) * C
    return off_xy, off_yt, off_xt


@triton.jit
def _load_volume(PXY, PYT, PXT, n, cols, m, T, H, W, C):
    off_xy, off_yt, off_xt = _token_offsets(n, T, H, W, C)
    v = tl.load(PXY + off_xy[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    v += tl.load(PYT + off_yt[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    v += tl.load(PXT + off_xt[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    return v


@triton.jit
def _fwd_kernel(PXY, PYT, PXT, G, Bt, V, Y, Mean, Rstd, NT, T, H, W, C, eps,
                HAS_NORM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    m = (n[:, None] < NT) & cm[None, :]
    v = _load_volume(PXY, PYT, PXT, n, cols, m, T, H, W, C)
    out = n[:, None] * C + cols[None, :]
    tl.store(V + out, v.to(V.dtype.element_ty), mask=m)
    if HAS_NORM:
        y, mean, rstd = layernorm_rows(v, m, cols, cm, G, Bt, C, eps)
        tl.store(Y + out, y.to(Y.dtype.element_ty), mask=m)
        tl.store(Mean + n, mean, mask=n < NT)
        tl.store(Rstd + n, rstd, mask=n < NT)


@triton.jit
def _ln_means_kernel(DY, PXY, PYT, PXT, G, Mean, Rstd, A1, A2, NT, T, H, W, C,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    # Per token: a1 = mean_c(gamma * dy), a2 = mean_c(gamma * dy * xhat).
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    nm = n < NT
    m = nm[:, None] & cm[None, :]
    v = _load_volume(PXY, PYT, PXT, n, cols, m, T, H, W, C)
    mean = tl.load(Mean + n, mask=nm, other=0.0)
    rstd = tl.load(Rstd + n, mask=nm, other=0.0)
    xhat = tl.where(m, (v - mean[:, None]) * rstd[:, None], 0.0)
    gy = tl.load(DY + n[:, None] * C + cols[None, :], mask=m, other=0.0).to(tl.float32)
    gy = gy * tl.load(G + cols, mask=cm, other=0.0)[None, :]
    tl.store(A1 + n, tl.sum(gy, axis=1) / C, mask=nm)
    tl.store(A2 + n, tl.sum(gy * xhat, axis=1) / C, mask=nm)


@triton.jit
def _sums_kernel(DV, DY, PXY, PYT, PXT, G, Mean, Rstd, A1, A2, DXY, DYT, DXT, DG, DB, T, H, W, C,
                 HAS_NORM: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_CC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    chunks = tl.cdiv(C, BLOCK_CC)
    b = pid // chunks
    cols = (pid % chunks) * BLOCK_CC + tl.arange(0, BLOCK_CC)
    xs = tl.arange(0, BLOCK_X).to(tl.int64)
    cm = cols < C
    m = (xs[:, None] < W) & cm[None, :]
    if HAS_NORM:
        gamma = tl.load(G + cols, mask=cm, other=0.0)
    dg = tl.zeros([BLOCK_X, BLOCK_CC], dtype=tl.float32)
    db = tl.zeros([BLOCK_X, BLOCK_CC], dtype=tl.float32)
    for y in range(0, H):
        acc_xy = tl.zeros([BLOCK_X, BLOCK_CC], dtype=tl.float32)
        for t in range(0, T):
            n = ((b * T + t) * H + y) * W + xs
            tile = n[:, None] * C + cols[None, :]
            g = tl.load(DV + tile, mask=m, other=0.0).to(tl.float32)
            if HAS_NORM:
                v = _load_volume(PXY, PYT, PXT, n, cols, m, T, H, W, C)
                nmask = xs < W
                mean = tl.load(Mean + n, mask=nmask, other=0.0)
                rstd = tl.load(Rstd + n, mask=nmask, other=0.0)
                a1 = tl.load(A1 + n, mask=nmask, other=0.0)
                a2 = tl.load(A2 + n, mask=nmask, other=0.0)
                xhat = tl.where(m, (v - mean[:, None]) * rstd[:, None], 0.0)
                dy = tl.load(DY + tile, mask=m, other=0.0).to(tl.float32)
                g += rstd[:, None] * (dy * gamma[None, :] - a1[:, None] - xhat * a2[:, None])
                g = tl.where(m, g, 0.0)
                dg += dy * xhat
                db += dy
            acc_xy += g
            tl.store(DXT + ((b * T + t) * H + y) * C + cols, tl.sum(g, axis=0), mask=cm)
            # dP_yt is private to this program: the same thread re-reads what it stored for the last y.
            yt = ((b * T + t) * W + xs)[:, None] * C + cols[None, :]
            if y == 0:
                tl.store(DYT + yt, g, mask=m)
            else:
                tl.store(DYT + yt, tl.load(DYT + yt, mask=m, other=0.0) + g, mask=m)
        tl.store(DXY + ((b * H + y) * W + xs)[:, None] * C + cols[None, :], acc_xy, mask=m)
    if HAS_NORM:
        tl.store(DG + b * C + cols, tl.sum(dg, axis=0), mask=cm)
        tl.store(DB + b * C + cols, tl.sum(db, axis=0), mask=cm)


def _row_block(c: int) -> tuple[int, int]:
    """(tokens, channels) a program holds: 4096 values, or 1024 when C is not a multiple of 16. Triton then
    cannot prove the rows aligned, every element keeps its own 64-bit address, and a 64 x 64 tile needs
    255 registers a thread plus 0.8 KB of spills (C 37, sm_90; 16 x 64: 128 registers, no spill)."""
    block_c = triton.next_power_of_2(c)
    values = 4096 if c % 16 == 0 else 1024
    return max(1, min(64, values // block_c)), block_c


def forward(p_xy, p_yt, p_xt, norm_weight, norm_bias, eps):
    p_xy, p_yt, p_xt = p_xy.contiguous(), p_yt.contiguous(), p_xt.contiguous()
    b, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    nt = b * t * h * w
    v = p_xy.new_empty((b, t * h * w, c))
    fused = norm_weight is not None
    g, bt = _launch.layernorm_weights(norm_weight, norm_bias)
    y, mean, rstd = _launch.layernorm_outputs(v, (b, t * h * w), fused)
    if not fused:  # the kernel takes every pointer; HAS_NORM=False never touches these
        g = bt = mean = rstd = v.new_empty(1, dtype=torch.float32)
        y = v
    block_n, block_c = _row_block(c)
    with _launch.device_guard(v):
        _fwd_kernel[(triton.cdiv(nt, block_n),)](p_xy, p_yt, p_xt, g, bt, v, y, mean, rstd, nt, t, h, w, c, eps,
                                                  HAS_NORM=fused, BLOCK_N=block_n, BLOCK_C=block_c)
    return _launch.unfused_outputs(v) if not fused else (v, y, mean, rstd)


def backward(dv, dy, p_xy, p_yt, p_xt, norm_weight, mean, rstd):
    p_xy, p_yt, p_xt = p_xy.contiguous(), p_yt.contiguous(), p_xt.contiguous()
    dv = dv.contiguous().to(p_xy.dtype)
    b, h, w, c = p_xy.shape
    t = p_yt.shape[1]
    nt = b * t * h * w
    f32 = dict(device=dv.device, dtype=torch.float32)
    d_xy, d_yt, d_xt = (torch.empty((b, h, w, c), **f32), torch.empty((b, t, w, c), **f32),
                        torch.empty((b, t, h, c), **f32))
    fused = dy is not None
    if fused:
        dy = dy.contiguous().to(p_xy.dtype)
        g = norm_weight.float().contiguous()
        mean, rstd = mean.contiguous(), rstd.contiguous()
        a = torch.empty((2, nt), **f32)
        parts = torch.empty((2, b, c), **f32)
        block_n, block_c = _row_block(c)
        with _launch.device_guard(dv):
            _ln_means_kernel[(triton.cdiv(nt, block_n),)](dy, p_xy, p_yt, p_xt, g, mean, rstd, a[0], a[1], nt, t, h,
                                                          w, c, BLOCK_N=block_n, BLOCK_C=block_c)
        a1, a2, dg, db = a[0], a[1], parts[0], parts[1]
    else:
        dy = dv
        g = mean = rstd = a1 = a2 = dg = db = torch.empty(1, **f32)
    # 16-byte rows per token: as narrow as a vector load, so enough programs run at the base shapes.
    block_cc = min(triton.next_power_of_2(c), max(4, 16 // dv.element_size()))
    grid = (b * triton.cdiv(c, block_cc),)
    with _launch.device_guard(dv):
        _sums_kernel[grid](dv, dy, p_xy, p_yt, p_xt, g, mean, rstd, a1, a2, d_xy, d_yt, d_xt, dg, db, t, h, w, c,
                           HAS_NORM=fused, BLOCK_X=triton.next_power_of_2(w), BLOCK_CC=block_cc)
    if not fused:
        zero = torch.zeros(c, **f32)
        return d_xy, d_yt, d_xt, zero, zero.clone()
    return d_xy, d_yt, d_xt, dg.sum(0), db.sum(0)
