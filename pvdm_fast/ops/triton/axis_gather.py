"""Triton kernels for the axis gather (+ fused LayerNorm); see pvdm_fast/ops/axis_gather.py.

A program owns BLOCK_M lines at one position j of the sequence (grid axis 1 is j, so the position
embedding row is one load per program) with all C channels. Line m = (b, o1, o2) reads grid token
b*N + o1*s1 + o2*s2 + j*sj, or the appended token when j == A. The backward writes dx rows back to
the grid and per-program partial sums for the position embedding and LayerNorm parameters, which
torch adds up: a program walks up to 16 blocks of lines (at least 1024 programs in all while there are
enough lines), so the partial sums stay a few percent of dS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pvdm_fast.ops import _launch
from pvdm_fast.ops.triton._layernorm import layernorm_rows


@triton.jit
def _rows(X, Tok, Pos, m_idx, cols, m, j, A, N, O1, O2, s1, s2, sj, C):
    # The sequence rows (lines m_idx at position j) in float32, and the grid token each one reads.
    o2 = m_idx % O2
    o1 = (m_idx // O2) % O1
    b = m_idx // (O2 * O1)
    n = b * N + o1 * s1 + o2 * s2 + j * sj
    from_grid = j < A
    s = tl.load(X + n[:, None] * C + cols[None, :], mask=m & from_grid, other=0.0).to(tl.float32)
    tok = tl.load(Tok + cols, mask=cols < C, other=0.0)
    s += tl.where(from_grid, 0.0, tok)[None, :]
    s += tl.load(Pos + j * C + cols, mask=cols < C, other=0.0)[None, :]
    return tl.where(m, s, 0.0), n


@triton.jit
def _fwd_kernel(X, Tok, Pos, G, Bt, S, Y, Mean, Rstd, M, A, N, O1, O2, s1, s2, sj, C, eps,
                HAS_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    m_idx = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    mm = m_idx < M
    m = mm[:, None] & cm[None, :]
    s, n = _rows(X, Tok, Pos, m_idx, cols, m, j, A, N, O1, O2, s1, s2, sj, C)
    row = m_idx * (A + 1) + j
    out = row[:, None] * C + cols[None, :]
    tl.store(S + out, s.to(S.dtype.element_ty), mask=m)
    if HAS_NORM:
        y, mean, rstd = layernorm_rows(s, m, cols, cm, G, Bt, C, eps)
        tl.store(Y + out, y.to(Y.dtype.element_ty), mask=m)
        tl.store(Mean + row, mean, mask=mm)
        tl.store(Rstd + row, rstd, mask=mm)


@triton.jit
def _bwd_kernel(DS, DY, X, Tok, Pos, G, Mean, Rstd, DX, PartPos, PartG, PartB, M, A, N, O1, O2, s1, s2, sj, C,
                ROW_BLOCKS, HAS_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # A program walks ROW_BLOCKS blocks of BLOCK_M lines at position j and writes one row of partial sums.
    pid = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    acc_pos = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(0, ROW_BLOCKS):
        m_idx = (pid * ROW_BLOCKS + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        mm = m_idx < M
        m = mm[:, None] & cm[None, :]
        row = m_idx * (A + 1) + j
        tile = row[:, None] * C + cols[None, :]
        g = tl.load(DS + tile, mask=m, other=0.0).to(tl.float32)
        s, n = _rows(X, Tok, Pos, m_idx, cols, m, j, A, N, O1, O2, s1, s2, sj, C)
        if HAS_NORM:
            mean = tl.load(Mean + row, mask=mm, other=0.0)
            rstd = tl.load(Rstd + row, mask=mm, other=0.0)
            xhat = tl.where(m, (s - mean[:, None]) * rstd[:, None], 0.0)
            dy = tl.load(DY + tile, mask=m, other=0.0).to(tl.float32)
            gy = dy * tl.load(G + cols, mask=cm, other=0.0)[None, :]
            a1 = tl.sum(gy, axis=1) / C
            a2 = tl.sum(gy * xhat, axis=1) / C
            g += rstd[:, None] * (gy - a1[:, None] - xhat * a2[:, None])
            g = tl.where(m, g, 0.0)
            acc_g += tl.sum(dy * xhat, axis=0)
            acc_b += tl.sum(dy, axis=0)
        tl.store(DX + n[:, None] * C + cols[None, :], g.to(DX.dtype.element_ty), mask=m & (j < A))
        acc_pos += tl.sum(g, axis=0)
    part = (pid * (A + 1) + j) * C + cols
    tl.store(PartPos + part, acc_pos, mask=cm)
    if HAS_NORM:
        tl.store(PartG + part, acc_g, mask=cm)
        tl.store(PartB + part, acc_b, mask=cm)


def _geometry(x, grid, axis):
    from pvdm_fast.ops.axis_gather import axis_geometry

    a, o1, o2, s1, s2, sj = axis_geometry(grid, axis)
    t, h, w = grid
    return a, o1, o2, s1, s2, sj, x.shape[0] * o1 * o2, t * h * w


def _block(c: int, lines: int) -> tuple[int, int]:
    """(lines, channels) a program holds: 4096 values, or 1024 when C is not a multiple of 16 (unaligned
    rows: per-element addresses; at C 37 a 32 x 64 tile takes 255 registers a thread in the backward,
    16 x 64 takes 154; sm_90, benchmarks/triton_compile.py)."""
    block_c = triton.next_power_of_2(c)
    values = 4096 if c % 16 == 0 else 1024
    return max(1, min(32, values // block_c, triton.next_power_of_2(lines))), block_c


def forward(x, token, pos, norm_weight, norm_bias, grid, axis, eps):
    x = x.contiguous()
    a, o1, o2, s1, s2, sj, m, n = _geometry(x, grid, axis)
    c = x.shape[-1]
    tok, p = token.float().contiguous(), pos.float().contiguous()
    s = x.new_empty((m, a + 1, c))
    fused = norm_weight is not None
    g, bt = _launch.layernorm_weights(norm_weight, norm_bias)
    y, mean, rstd = _launch.layernorm_outputs(s, (m, a + 1), fused)
    if not fused:  # the kernel takes every pointer; HAS_NORM=False never touches these
        g = bt = mean = rstd = tok
        y = s
    block_m, block_c = _block(c, m)
    with _launch.device_guard(x):
        _fwd_kernel[(triton.cdiv(m, block_m), a + 1)](x, tok, p, g, bt, s, y, mean, rstd, m, a, n, o1, o2, s1, s2, sj,
                                                      c, eps, HAS_NORM=fused, BLOCK_M=block_m, BLOCK_C=block_c)
    return _launch.unfused_outputs(s) if not fused else (s, y, mean, rstd)


def backward(ds, dy, x, token, pos, norm_weight, mean, rstd, grid, axis):
    x = x.contiguous()
    a, o1, o2, s1, s2, sj, m, n = _geometry(x, grid, axis)
    c = x.shape[-1]
    ds = ds.contiguous().to(x.dtype)
    tok, p = token.float().contiguous(), pos.float().contiguous()
    fused = dy is not None
    block_m, block_c = _block(c, m)
    per_program, nb = _launch.blocks_per_program(triton.cdiv(m, block_m), programs=max(1, 1024 // (a + 1)))
    parts = torch.empty((3 if fused else 1, nb, a + 1, c), device=x.device, dtype=torch.float32)
    if fused:
        dy = dy.contiguous().to(x.dtype)
        g = norm_weight.float().contiguous()
        mean, rstd = mean.contiguous(), rstd.contiguous()
        part_g, part_b = parts[1], parts[2]
    else:
        dy, g, mean, rstd, part_g, part_b = ds, tok, tok, tok, parts[0], parts[0]
    dx = torch.empty_like(x)
    with _launch.device_guard(x):
        _bwd_kernel[(nb, a + 1)](ds, dy, x, tok, p, g, mean, rstd, dx, parts[0], part_g, part_b, m, a, n, o1, o2,
                                 s1, s2, sj, c, per_program, HAS_NORM=fused, BLOCK_M=block_m, BLOCK_C=block_c)
    dpos = parts[0].sum(0)
    if not fused:
        zero = torch.zeros(c, device=x.device, dtype=torch.float32)
        return dx, dpos[-1].clone(), dpos, zero, zero.clone()
    return dx, dpos[-1].clone(), dpos, parts[1].sum((0, 1)), parts[2].sum((0, 1))
