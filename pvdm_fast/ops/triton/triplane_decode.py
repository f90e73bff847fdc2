"""Triton kernels for the triplane broadcast sum (+ fused LayerNorm); see pvdm_fast/ops/triplane_decode.py.

Forward: a program owns BLOCK_N tokens with all C channels (the LayerNorm needs whole rows) and gathers
the three plane rows of each token. Backward: with the LayerNorm, a row pass first turns dY into the
two per-token means the LayerNorm backward needs (and, per program, partial sums of the LayerNorm
weight and bias gradients). Then one program per (batch, 16-byte channel slice) walks the whole volume
once, a (rows x columns) tile of the grid per frame: dP_xt (sum over x) and this block's share of dP_yt
(sum over y) are tile reductions, dP_xy (sum over t) stays in registers across the frame loop. When the
tile holds every row, dP_yt is complete; otherwise it is summed in its float32 output, which only this
program touches, so no atomics are needed.
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
def _ln_means_kernel(DY, PXY, PYT, PXT, G, Mean, Rstd, A1, A2, PartG, PartB, NT, T, H, W, C, ROW_BLOCKS,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    # Per token: a1 = mean_c(gamma * dy), a2 = mean_c(gamma * dy * xhat). Per program (ROW_BLOCKS blocks of
    # BLOCK_N tokens): its share of the LayerNorm weight and bias gradients, sum(dy * xhat) and sum(dy).
    # The axis-sum pass reads dY again right after, frame by frame from t = 0 (every batch item at once).
    # So this pass walks the frames the other way, t = T-1 first, and asks L2 to keep dY: the frames the
    # sums start with are the last read here, the likeliest still in L2.
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    gamma = tl.load(G + cols, mask=cm, other=0.0)[None, :]
    dg = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    hw = H * W
    frame = NT // T  # tokens of one frame over the batch
    for i in range(0, ROW_BLOCKS):
        k = (pid * ROW_BLOCKS + i) * BLOCK_N + tl.arange(0, BLOCK_N)  # frame-major, last frame first
        nm = k < NT
        r = k % frame
        n = ((r // hw) * T + (T - 1 - k // frame)) * hw + r % hw
        m = nm[:, None] & cm[None, :]
        v = _load_volume(PXY, PYT, PXT, n, cols, m, T, H, W, C)
        mean = tl.load(Mean + n, mask=nm, other=0.0)
        rstd = tl.load(Rstd + n, mask=nm, other=0.0)
        xhat = tl.where(m, (v - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + n[:, None] * C + cols[None, :], mask=m, other=0.0,
                     eviction_policy="evict_last").to(tl.float32)
        gy = dy * gamma
        tl.store(A1 + n, tl.sum(gy, axis=1) / C, mask=nm)
        tl.store(A2 + n, tl.sum(gy * xhat, axis=1) / C, mask=nm)
        dg += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(PartG + pid * C + cols, dg, mask=cm)
    tl.store(PartB + pid * C + cols, db, mask=cm)


@triton.jit
def _sums_kernel(DV, DY, PXY, PYT, PXT, G, Mean, Rstd, A1, A2, DXY, DYT, DXT, T, H, W, C,
                 HAS_NORM: tl.constexpr, WIDE: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
                 BLOCK_CC: tl.constexpr):
    # Offsets within one batch item are 32-bit unless WIDE (a batch item over 2**31 values): 64-bit
    # addresses per element cost this kernel ~80 more registers a thread (sm_90, with the LayerNorm).
    pid = tl.program_id(0)
    chunks = tl.cdiv(C, BLOCK_CC)
    b = (pid // chunks).to(tl.int64)
    hw = H * W
    DV += b * T * hw * C
    DY += b * T * hw * C
    PXY += b * hw * C
    PYT += b * T * W * C
    PXT += b * T * H * C
    DXY += b * hw * C
    DYT += b * T * W * C
    DXT += b * T * H * C
    Mean += b * T * hw
    Rstd += b * T * hw
    A1 += b * T * hw
    A2 += b * T * hw
    cols = (pid % chunks) * BLOCK_CC + tl.arange(0, BLOCK_CC)
    cm = cols < C
    c3 = cols[None, None, :]
    xs = tl.arange(0, BLOCK_X)
    if WIDE:
        xs = xs.to(tl.int64)
    xm = xs < W
    ytm = xm[:, None] & cm[None, :]  # a (x, channel) row of dP_yt
    if HAS_NORM:
        gamma = tl.load(G + cols, mask=cm, other=0.0)[None, None, :]
    for y0 in range(0, H, BLOCK_Y):
        ys = y0 + tl.arange(0, BLOCK_Y)
        if WIDE:
            ys = ys.to(tl.int64)
        ym = ys < H
        pm = ym[:, None] & xm[None, :]
        m = pm[:, :, None] & cm[None, None, :]
        xtm = ym[:, None] & cm[None, :]  # a (y, channel) row of dP_xt
        pos = ys[:, None] * W + xs[None, :]  # y*W + x
        if HAS_NORM:  # P_xy does not depend on t: one load per block of rows
            pxy = tl.load(PXY + (pos * C)[:, :, None] + c3, mask=m, other=0.0).to(tl.float32)
        if y0 > 0:  # the dP_yt rows re-read below were stored by other threads of this program
            tl.debug_barrier()
        acc_xy = tl.zeros([BLOCK_Y, BLOCK_X, BLOCK_CC], dtype=tl.float32)
        for t in range(0, T):
            n = t * hw + pos
            tile = (n * C)[:, :, None] + c3
            g = tl.load(DV + tile, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            yt = ((t * W + xs) * C)[:, None] + cols[None, :]
            xt = ((t * H + ys) * C)[:, None] + cols[None, :]
            if HAS_NORM:
                pyt = tl.load(PYT + yt, mask=ytm, other=0.0).to(tl.float32)
                pxt = tl.load(PXT + xt, mask=xtm, other=0.0).to(tl.float32)
                v = pxy + pyt[None, :, :] + pxt[:, None, :]
                mean = tl.load(Mean + n, mask=pm, other=0.0)[:, :, None]
                rstd = tl.load(Rstd + n, mask=pm, other=0.0)[:, :, None]
                a1 = tl.load(A1 + n, mask=pm, other=0.0)[:, :, None]
                a2 = tl.load(A2 + n, mask=pm, other=0.0)[:, :, None]
                xhat = tl.where(m, (v - mean) * rstd, 0.0)
                dy = tl.load(DY + tile, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
                g += rstd * (dy * gamma - a1 - xhat * a2)
                g = tl.where(m, g, 0.0)
            acc_xy += g
            tl.store(DXT + xt, tl.sum(g, axis=1), mask=xtm)
            part = tl.sum(g, axis=0)  # this block's rows of the sum over y
            if y0 == 0:
                tl.store(DYT + yt, part, mask=ytm)
            else:
                tl.store(DYT + yt, tl.load(DYT + yt, mask=ytm, other=0.0) + part, mask=ytm)
        tl.store(DXY + (pos * C)[:, :, None] + c3, acc_xy, mask=m)


# Values in one tile of the axis-sum kernel (rows x columns x channels): 32 a thread at the default 4 warps.
# Large enough that the few programs there are (batch x channel slices) keep many loads in flight (the
# base shapes: 192 programs, 16 KB of dV and dY each), small enough for two programs per SM (233
# registers a thread with the LayerNorm, bf16, sm_90; 8192 values at 8 warps took 174 without it).
SUMS_TILE = 4096
# Batch items of at least this many values take 64-bit offsets in the axis-sum kernel.
WIDE_VALUES = 2**31


def _sums_blocks(h: int, w: int, c: int, itemsize: int) -> tuple[int, int, int]:
    """(BLOCK_Y, BLOCK_X, BLOCK_CC) of the axis-sum kernel: 16-byte channel slices (as narrow as a vector
    load, so there are batch * C / slice programs), every column, and as many rows as the tile holds:
    all of them when the tile holds the whole grid, else dP_yt is summed over the blocks of rows in its
    float32 output."""
    block_cc = min(triton.next_power_of_2(c), max(4, 16 // itemsize))
    block_x = triton.next_power_of_2(w)
    block_y = max(1, min(triton.next_power_of_2(h), SUMS_TILE // (block_x * block_cc)))
    return block_y, block_x, block_cc


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
        block_n, block_c = _row_block(c)
        per_program, programs = _launch.blocks_per_program(triton.cdiv(nt, block_n))
        parts = torch.empty((2, programs, c), **f32)
        with _launch.device_guard(dv):
            _ln_means_kernel[(programs,)](dy, p_xy, p_yt, p_xt, g, mean, rstd, a[0], a[1], parts[0], parts[1], nt, t,
                                          h, w, c, per_program, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=8)
        a1, a2 = a[0], a[1]
    else:
        dy = dv
        g = mean = rstd = a1 = a2 = torch.empty(1, **f32)
    block_y, block_x, block_cc = _sums_blocks(h, w, c, dv.element_size())
    grid = (b * triton.cdiv(c, block_cc),)
    with _launch.device_guard(dv):
        _sums_kernel[grid](dv, dy, p_xy, p_yt, p_xt, g, mean, rstd, a1, a2, d_xy, d_yt, d_xt, t, h, w, c,
                           HAS_NORM=fused, WIDE=t * h * w * c >= WIDE_VALUES, BLOCK_Y=block_y, BLOCK_X=block_x,
                           BLOCK_CC=block_cc)
    if not fused:
        zero = torch.zeros(c, **f32)
        return d_xy, d_yt, d_xt, zero, zero.clone()
    return d_xy, d_yt, d_xt, parts[0].sum(0), parts[1].sum(0)
