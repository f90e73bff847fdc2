"""Triton kernels for packed-triplane GroupNorm + FiLM + SiLU (see pvdm_fast/ops/group_norm_silu.py).

One program per (batch, group, segment) region: Cg channel rows of `len` contiguous elements with row
stride L. Segment starts/lengths arrive as scalar arguments (no device table, so launches stay
CUDA-graph safe); the region is walked in BLOCK_C x BLOCK_L tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_SEGMENTS = 8


@triton.jit
def _pick(s, v0, v1, v2, v3, v4, v5, v6, v7):
    # The s-th of eight scalars (segment tables passed by value).
    r = tl.where(s == 0, v0, 0) + tl.where(s == 1, v1, 0) + tl.where(s == 2, v2, 0) + tl.where(s == 3, v3, 0)
    return r + tl.where(s == 4, v4, 0) + tl.where(s == 5, v5, 0) + tl.where(s == 6, v6, 0) + tl.where(s == 7, v7, 0)


@triton.jit
def _region(C, L, G, S, o0, o1, o2, o3, o4, o5, o6, o7, n0, n1, n2, n3, n4, n5, n6, n7):
    pid = tl.program_id(0).to(tl.int64)
    s = pid % S
    g = (pid // S) % G
    b = pid // (S * G)
    cg = C // G
    start = _pick(s, o0, o1, o2, o3, o4, o5, o6, o7).to(tl.int64)
    length = _pick(s, n0, n1, n2, n3, n4, n5, n6, n7).to(tl.int64)
    base = (b * C + g * cg) * L + start
    return pid, s, g, b, cg, length, base


@triton.jit
def _channel_params(W, Bias, Scale, Shift, b, C, ch, cm, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    # Per-channel affine (w, bias) and FiLM (1 + scale, shift) for one tile of channels.
    w = tl.load(W + ch, mask=cm, other=0.0)
    bi = tl.load(Bias + ch, mask=cm, other=0.0)
    mul = tl.full([BLOCK_C], 1.0, tl.float32)
    add = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_SCALE:
        mul += tl.load(Scale + b * C + ch, mask=cm, other=0.0)
    if HAS_SHIFT:
        add = tl.load(Shift + b * C + ch, mask=cm, other=0.0)
    return w, bi, mul, add


@triton.jit
def _gn_fwd_kernel(X, Y, W, Bias, Scale, Shift, Mean, Rstd, C, L, G, S, eps,
                   o0, o1, o2, o3, o4, o5, o6, o7, n0, n1, n2, n3, n4, n5, n6, n7,
                   HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, APPLY_SILU: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid, s, g, b, cg, length, base = _region(C, L, G, S, o0, o1, o2, o3, o4, o5, o6, o7,
                                             n0, n1, n2, n3, n4, n5, n6, n7)
    rc = tl.arange(0, BLOCK_C)
    rl = tl.arange(0, BLOCK_L)
    count = (cg * length).to(tl.float32)
    # pass 1: mean
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
    for c0 in range(0, cg, BLOCK_C):
        for l0 in range(0, length, BLOCK_L):
            cc, ll = c0 + rc, l0 + rl
            m = (cc[:, None] < cg) & (ll[None, :] < length)
            acc += tl.load(X + base + cc[:, None] * L + ll[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    # pass 2: centred variance (robust when |mean| >> std)
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
    for c0 in range(0, cg, BLOCK_C):
        for l0 in range(0, length, BLOCK_L):
            cc, ll = c0 + rc, l0 + rl
            m = (cc[:, None] < cg) & (ll[None, :] < length)
            v = tl.load(X + base + cc[:, None] * L + ll[None, :], mask=m, other=0.0).to(tl.float32)
            d = tl.where(m, v - mean, 0.0)
            acc += d * d
    var = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(Mean + pid, mean)
    tl.store(Rstd + pid, rstd)
    # pass 3: normalise, affine, FiLM, SiLU
    for c0 in range(0, cg, BLOCK_C):
        cc = c0 + rc
        cm = cc < cg
        ch = g * cg + cc
        w, bi, mul, add = _channel_params(W, Bias, Scale, Shift, b, C, ch, cm, HAS_SCALE, HAS_SHIFT, BLOCK_C)
        for l0 in range(0, length, BLOCK_L):
            ll = l0 + rl
            m = cm[:, None] & (ll[None, :] < length)
            off = base + cc[:, None] * L + ll[None, :]
            v = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
            a = (v - mean) * rstd * w[:, None] + bi[:, None]
            z = a * mul[:, None] + add[:, None]
            if APPLY_SILU:
                z = z / (1.0 + tl.exp(-z))
            tl.store(Y + off, z.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_terms(X, DY, off, m, mean, rstd, w, bi, mul, add, APPLY_SILU: tl.constexpr):
    v = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
    gy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
    xhat = (v - mean) * rstd
    a = xhat * w[:, None] + bi[:, None]
    if APPLY_SILU:
        z = a * mul[:, None] + add[:, None]
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz = gy * sig * (1.0 + z * (1.0 - sig))
    else:
        dz = gy
    dz = tl.where(m, dz, 0.0)
    xhat = tl.where(m, xhat, 0.0)
    da = dz * mul[:, None]
    return xhat, a, dz, da, da * w[:, None]


@triton.jit
def _gn_bwd_kernel(X, DY, DX, W, Bias, Scale, Shift, Mean, Rstd, PartW, PartB, PartScale, PartShift,
                   C, L, G, S, o0, o1, o2, o3, o4, o5, o6, o7, n0, n1, n2, n3, n4, n5, n6, n7,
                   HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, APPLY_SILU: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid, s, g, b, cg, length, base = _region(C, L, G, S, o0, o1, o2, o3, o4, o5, o6, o7,
                                             n0, n1, n2, n3, n4, n5, n6, n7)
    rc = tl.arange(0, BLOCK_C)
    rl = tl.arange(0, BLOCK_L)
    mean = tl.load(Mean + pid)
    rstd = tl.load(Rstd + pid)
    count = (cg * length).to(tl.float32)
    g1 = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
    g2 = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
    # pass 1: per-channel partial sums for the parameters, and the two group sums dx needs
    for c0 in range(0, cg, BLOCK_C):
        cc = c0 + rc
        cm = cc < cg
        ch = g * cg + cc
        w, bi, mul, add = _channel_params(W, Bias, Scale, Shift, b, C, ch, cm, HAS_SCALE, HAS_SHIFT, BLOCK_C)
        p_dz = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
        p_dza = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
        p_dax = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
        p_da = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
        for l0 in range(0, length, BLOCK_L):
            ll = l0 + rl
            m = cm[:, None] & (ll[None, :] < length)
            xhat, a, dz, da, dxhat = _bwd_terms(X, DY, base + cc[:, None] * L + ll[None, :], m, mean, rstd,
                                                w, bi, mul, add, APPLY_SILU)
            p_dz += dz
            p_dza += dz * a
            p_dax += da * xhat
            p_da += da
            g1 += dxhat
            g2 += dxhat * xhat
        part = (b * C + ch) * S + s
        tl.store(PartShift + part, tl.sum(p_dz, axis=1), mask=cm)
        tl.store(PartScale + part, tl.sum(p_dza, axis=1), mask=cm)
        tl.store(PartW + part, tl.sum(p_dax, axis=1), mask=cm)
        tl.store(PartB + part, tl.sum(p_da, axis=1), mask=cm)
    m1 = tl.sum(tl.sum(g1, axis=1), axis=0) / count
    m2 = tl.sum(tl.sum(g2, axis=1), axis=0) / count
    # pass 2: input gradient
    for c0 in range(0, cg, BLOCK_C):
        cc = c0 + rc
        cm = cc < cg
        ch = g * cg + cc
        w, bi, mul, add = _channel_params(W, Bias, Scale, Shift, b, C, ch, cm, HAS_SCALE, HAS_SHIFT, BLOCK_C)
        for l0 in range(0, length, BLOCK_L):
            ll = l0 + rl
            m = cm[:, None] & (ll[None, :] < length)
            off = base + cc[:, None] * L + ll[None, :]
            xhat, a, dz, da, dxhat = _bwd_terms(X, DY, off, m, mean, rstd, w, bi, mul, add, APPLY_SILU)
            tl.store(DX + off, (rstd * (dxhat - m1 - xhat * m2)).to(DX.dtype.element_ty), mask=m)


def _blocks(cg: int, max_len: int) -> tuple[int, int]:
    """Tile shape: up to 128 positions wide, about 2048 elements in all."""
    block_l = min(triton.next_power_of_2(max_len), 128)
    block_c = min(triton.next_power_of_2(cg), max(1, 2048 // block_l))
    return block_c, block_l


def _segment_args(segments) -> list[int]:
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"group_norm_silu (triton): at most {MAX_SEGMENTS} segments, got {len(segments)}")
    starts, total = [], 0
    for n in segments:
        starts.append(total)
        total += n
    pad = [0] * (MAX_SEGMENTS - len(segments))
    return starts + pad + list(segments) + pad


def _film_args(x, weight, bias, scale, shift):
    w, bi = weight.float().contiguous(), bias.float().contiguous()
    sc = scale.float().contiguous() if scale is not None else w
    sh = shift.float().contiguous() if shift is not None else w
    return w, bi, sc, sh


def forward(x, weight, bias, scale, shift, segments, groups, eps, apply_silu):
    x = x.contiguous()
    b, c, length = x.shape
    w, bi, sc, sh = _film_args(x, weight, bias, scale, shift)
    y = torch.empty_like(x)
    mean = torch.empty((b, groups, len(segments)), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_c, block_l = _blocks(c // groups, max(segments))
    grid = (b * groups * len(segments),)
    with torch.cuda.device(x.device) if x.is_cuda else _nullctx():
        _gn_fwd_kernel[grid](x, y, w, bi, sc, sh, mean, rstd, c, length, groups, len(segments), eps,
                             *_segment_args(segments), HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
                             APPLY_SILU=apply_silu, BLOCK_C=block_c, BLOCK_L=block_l)
    return y, mean, rstd


def backward(dy, x, weight, bias, scale, shift, mean, rstd, segments, groups, apply_silu):
    x, dy = x.contiguous(), dy.contiguous().to(x.dtype)
    b, c, length = x.shape
    w, bi, sc, sh = _film_args(x, weight, bias, scale, shift)
    dx = torch.empty_like(x)
    parts = torch.empty((4, b, c, len(segments)), device=x.device, dtype=torch.float32)
    block_c, block_l = _blocks(c // groups, max(segments))
    grid = (b * groups * len(segments),)
    with torch.cuda.device(x.device) if x.is_cuda else _nullctx():
        _gn_bwd_kernel[grid](x, dy, dx, w, bi, sc, sh, mean.contiguous(), rstd.contiguous(), parts[0], parts[1],
                             parts[2], parts[3], c, length, groups, len(segments), *_segment_args(segments),
                             HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, APPLY_SILU=apply_silu,
                             BLOCK_C=block_c, BLOCK_L=block_l)
    return dx, parts[0].sum((0, 2)), parts[1].sum((0, 2)), parts[2].sum(2), parts[3].sum(2)


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
