"""Flash-style attention on strided q, k, v (Triton): the kernels behind axial_attention and joint_attention.

Every operand is described by five element strides (outer, inner, head, position, dim): sequence n
starts at (n // n_inner) * outer + (n % n_inner) * inner, so the time, space, row and column axes of a
(B, T, h, w, 3, heads, d) qkv grid, and the channels-first (B, 3C, L) UNet layout, are all read where
they lie. The kernels are the usual online-softmax recomputation scheme: the forward saves only the
log-sum-exp per query; the backward runs a dq kernel (which also writes delta = rowsum(dO * O)) and a
dk/dv kernel, neither holding a score matrix beyond one tile. Where all keys fit one tile the dq kernel
takes delta = rowsum(P * dP) in float32 from that tile instead (no O read, and exact where the stored,
rounded O is not: dP - delta cancels when one key dominates a row); with one query per sequence every
dot runs in float32 (ieee) and delta is exact too (a first pass over the key tiles), which costs little
at that size.

Options compiled in as constexprs: adjacent-pair rotary on q and k (tables (L, d) cos and signed sin,
applied in float32 after the load and undone on dq/dk), one extra key/value per sequence (the axis
projections' appended token, given separately; per sequence or one shared by all), and packing several
short sequences into one tile (block-diagonal mask) so a 16-frame time axis still fills 64-row tiles.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from pvdm_fast.ops import _ext
from pvdm_fast.ops.triton import _fit

LOG2E = 1.4426950408889634


@triton.jit
def _line_offset(n, N_INNER, s_outer, s_inner):
    return (n // N_INNER) * s_outer + (n % N_INNER) * s_inner


@triton.jit
def _rows(blk, n0, BP: tl.constexpr, G: tl.constexpr):
    # Tile row r holds position blk*BP + r % BP of sequence n0 + r // BP (G sequences per tile).
    r = tl.arange(0, G * BP)
    g = r // BP
    return n0 + g, blk * BP + r % BP, g


@triton.jit
def _swap_pairs(x, R: tl.constexpr, BD: tl.constexpr):
    a, b = tl.split(tl.reshape(x, (R, BD // 2, 2)))
    return tl.reshape(tl.join(b, a), (R, BD))


@triton.jit
def _tables(COS, SIN, pos, d, mask, D):
    off = pos[:, None] * D + d[None, :]
    return tl.load(COS + off, mask=mask, other=0.0), tl.load(SIN + off, mask=mask, other=0.0)


@triton.jit
def _load_rows(P, row_off, d, s_d, mask, COS, SIN, pos, D, HAS_ROT: tl.constexpr, R: tl.constexpr,
               BD: tl.constexpr):
    # One (R, BD) tile in float32, rotated when HAS_ROT: out = x * cos + swap_pairs(x) * signed_sin.
    x = tl.load(P + row_off[:, None] + d[None, :] * s_d, mask=mask, other=0.0).to(tl.float32)
    if HAS_ROT:
        c, s = _tables(COS, SIN, pos, d, mask, D)
        x = x * c + _swap_pairs(x, R, BD) * s
    return x


@triton.jit
def _unrotate(g, COS, SIN, pos, d, mask, D, HAS_ROT: tl.constexpr, R: tl.constexpr, BD: tl.constexpr):
    # Transpose of the rotation: dx = g * cos + swap_pairs(g * signed_sin).
    if HAS_ROT:
        c, s = _tables(COS, SIN, pos, d, mask, D)
        g = g * c + _swap_pairs(g * s, R, BD)
    return g


@triton.jit
def _program(NQB, H, G: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    blk = pid % NQB
    rest = pid // NQB
    return blk, rest % H, (rest // H) * G


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, EK, EV, COS, SIN,
              sq_o, sq_i, sq_h, sq_p, sq_d, sk_o, sk_i, sk_h, sk_p, sk_d,
              so_o, so_i, so_h, so_p, so_d, se_n, se_h, se_d,
              NSEQ, N_INNER, H, LQ, LK, D, NQB, qk_scale,
              HAS_EXTRA: tl.constexpr, HAS_ROT: tl.constexpr, G: tl.constexpr, BMP: tl.constexpr,
              BNP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr):
    qb, h, n0 = _program(NQB, H, G)
    dt = tl.float32 if F32 else Q.dtype.element_ty  # dtype of the tl.dot operands
    BM: tl.constexpr = G * BMP
    BN: tl.constexpr = G * BNP
    d = tl.arange(0, BD)
    dm = d < D
    nq, posq, gq = _rows(qb, n0, BMP, G)
    vq = (nq < NSEQ) & (posq < LQ)
    qmask = vq[:, None] & dm[None, :]
    qf = _load_rows(Q, _line_offset(nq, N_INNER, sq_o, sq_i) + h * sq_h + posq * sq_p, d, sq_d, qmask,
                    COS, SIN, posq, D, HAS_ROT, BM, BD)
    q = qf.to(dt)  # for tl.dot; the extra token's score and gradient use the unrounded (rotated) qf
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    for kb in range(0, tl.cdiv(LK, BNP)):
        nk, posk, gk = _rows(kb, n0, BNP, G)
        vk = (nk < NSEQ) & (posk < LK)
        kmask = vk[:, None] & dm[None, :]
        koff = _line_offset(nk, N_INNER, sk_o, sk_i) + h * sk_h + posk * sk_p
        k = _load_rows(K, koff, d, sk_d, kmask, COS, SIN, posk, D, HAS_ROT, BN, BD).to(dt)
        v = tl.load(V + koff[:, None] + d[None, :] * sk_d, mask=kmask, other=0.0).to(dt)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s = tl.where(vk[None, :] & (gq[:, None] == gk[None, :]), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows of absent sequences see no key
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dt), v, input_precision=PREC)
        m = m_new
    if HAS_EXTRA:
        eoff = nq * se_n + h * se_h
        emask = (nq < NSEQ)[:, None] & dm[None, :]
        ek = tl.load(EK + eoff[:, None] + d[None, :] * se_d, mask=emask, other=0.0).to(tl.float32)
        ev = tl.load(EV + eoff[:, None] + d[None, :] * se_d, mask=emask, other=0.0).to(tl.float32)
        se = tl.sum(qf * ek, 1) * qk_scale
        m_new = tl.maximum(m, se)
        alpha = tl.exp2(m - m_new)
        pe = tl.exp2(se - m_new)
        l = l * alpha + pe
        acc = acc * alpha[:, None] + pe[:, None] * ev
        m = m_new
    l_safe = tl.where(l > 0, l, 1.0)
    out = acc / l_safe[:, None]
    ooff = _line_offset(nq, N_INNER, so_o, so_i) + h * so_h + posq * so_p
    tl.store(O + ooff[:, None] + d[None, :] * so_d, out.to(O.dtype.element_ty), mask=qmask)
    # natural-log LSE of the scaled scores (qk_scale carries log2(e))
    tl.store(LSE + (nq * H + h) * LQ + posq, (m + tl.log2(l_safe)) / 1.4426950408889634, mask=vq)


@triton.jit
def _dq_tile(q, do_d, lse2, vq, gq, K, V, COS, SIN, kb, n0, h, d, dm, sk_o, sk_i, sk_h, sk_p, sk_d,
             NSEQ, N_INNER, LK, D, qk_scale, HAS_ROT: tl.constexpr, G: tl.constexpr, BNP: tl.constexpr,
             BD: tl.constexpr, PREC: tl.constexpr):
    # Key block kb of the dq kernel: (rotated k in q's dtype, P, dP = dO V^T), P and dP in float32.
    BN: tl.constexpr = G * BNP
    nk, posk, gk = _rows(kb, n0, BNP, G)
    vk = (nk < NSEQ) & (posk < LK)
    kmask = vk[:, None] & dm[None, :]
    koff = _line_offset(nk, N_INNER, sk_o, sk_i) + h * sk_h + posk * sk_p
    k = _load_rows(K, koff, d, sk_d, kmask, COS, SIN, posk, D, HAS_ROT, BN, BD).to(q.dtype)
    v = tl.load(V + koff[:, None] + d[None, :] * sk_d, mask=kmask, other=0.0).to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    ok = vq[:, None] & vk[None, :] & (gq[:, None] == gk[None, :])
    p = tl.where(ok, tl.exp2(s - lse2[:, None]), 0.0)
    return k, p, tl.dot(do_d, tl.trans(v), input_precision=PREC)


@triton.jit
def _attn_bwd_dq(Q, K, V, O, DO, DQ, LSE, DELTA, EK, EV, DKE, DVE, COS, SIN,
                 sq_o, sq_i, sq_h, sq_p, sq_d, sk_o, sk_i, sk_h, sk_p, sk_d,
                 so_o, so_i, so_h, so_p, so_d, sg_o, sg_i, sg_h, sg_p, sg_d, se_n, se_h, se_d,
                 NSEQ, N_INNER, H, LQ, LK, D, NQB, qk_scale, scale,
                 HAS_EXTRA: tl.constexpr, HAS_ROT: tl.constexpr, ONE_KB: tl.constexpr, G: tl.constexpr,
                 BMP: tl.constexpr, BNP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
                 F32: tl.constexpr):
    qb, h, n0 = _program(NQB, H, G)
    dt = tl.float32 if F32 else Q.dtype.element_ty  # dtype of the tl.dot operands
    BM: tl.constexpr = G * BMP
    d = tl.arange(0, BD)
    dm = d < D
    nq, posq, gq = _rows(qb, n0, BMP, G)
    vq = (nq < NSEQ) & (posq < LQ)
    qmask = vq[:, None] & dm[None, :]
    qf = _load_rows(Q, _line_offset(nq, N_INNER, sq_o, sq_i) + h * sq_h + posq * sq_p, d, sq_d, qmask,
                    COS, SIN, posq, D, HAS_ROT, BM, BD)
    q = qf.to(dt)  # for tl.dot; the extra token's score and gradient use the unrounded (rotated) qf
    goff = _line_offset(nq, N_INNER, sg_o, sg_i) + h * sg_h + posq * sg_p
    do = tl.load(DO + goff[:, None] + d[None, :] * sg_d, mask=qmask, other=0.0).to(tl.float32)
    do_d = do.to(dt)
    stat = (nq * H + h) * LQ + posq
    lse2 = tl.load(LSE + stat, mask=vq, other=0.0) * 1.4426950408889634
    if HAS_EXTRA:
        eoff = nq * se_n + h * se_h
        emask = (nq < NSEQ)[:, None] & dm[None, :]
        ek = tl.load(EK + eoff[:, None] + d[None, :] * se_d, mask=emask, other=0.0).to(tl.float32)
        ev = tl.load(EV + eoff[:, None] + d[None, :] * se_d, mask=emask, other=0.0).to(tl.float32)
        pe = tl.where(vq, tl.exp2(tl.sum(qf * ek, 1) * qk_scale - lse2), 0.0)
        dpe = tl.sum(do * ev, 1)
    if ONE_KB:
        # All keys in one tile: delta = rowsum(P * dP) in float32 from the tile itself, which is exact where
        # rowsum(dO * O) is not (O is stored rounded to the input dtype, and dP - delta cancels when one key,
        # often the extra token, dominates a row).
        k, p, dp = _dq_tile(q, do_d, lse2, vq, gq, K, V, COS, SIN, 0, n0, h, d, dm, sk_o, sk_i, sk_h, sk_p,
                            sk_d, NSEQ, N_INNER, LK, D, qk_scale, HAS_ROT, G, BNP, BD, PREC)
        delta = tl.sum(p * dp, 1)
        if HAS_EXTRA:
            delta += pe * dpe
        dq = tl.dot((p * (dp - delta[:, None])).to(dt), k, input_precision=PREC)
    else:
        if F32:  # one query per sequence: a first pass over the key tiles for the exact delta is cheap
            delta = tl.zeros([BM], dtype=tl.float32)
            for kb in range(tl.cdiv(LK, BNP)):
                k, p, dp = _dq_tile(q, do_d, lse2, vq, gq, K, V, COS, SIN, kb, n0, h, d, dm, sk_o, sk_i, sk_h,
                                    sk_p, sk_d, NSEQ, N_INNER, LK, D, qk_scale, HAS_ROT, G, BNP, BD, PREC)
                delta += tl.sum(p * dp, 1)
            if HAS_EXTRA:
                delta += pe * dpe
        else:  # the usual rowsum(dO * O): a second pass would cost two more dots per tile pair
            ooff = _line_offset(nq, N_INNER, so_o, so_i) + h * so_h + posq * so_p
            o = tl.load(O + ooff[:, None] + d[None, :] * so_d, mask=qmask, other=0.0).to(tl.float32)
            delta = tl.sum(do * o, 1)
        dq = tl.zeros([BM, BD], dtype=tl.float32)
        for kb in range(0, tl.cdiv(LK, BNP)):
            k, p, dp = _dq_tile(q, do_d, lse2, vq, gq, K, V, COS, SIN, kb, n0, h, d, dm, sk_o, sk_i, sk_h, sk_p,
                                sk_d, NSEQ, N_INNER, LK, D, qk_scale, HAS_ROT, G, BNP, BD, PREC)
            dq += tl.dot((p * (dp - delta[:, None])).to(dt), k, input_precision=PREC)
    tl.store(DELTA + stat, delta, mask=vq)
    if HAS_EXTRA:
        dse = pe * (dpe - delta)
        dq += dse[:, None] * ek
        # per-sequence partial sums over this tile's queries; summed over query blocks by the caller
        dke = tl.sum(tl.reshape(dse[:, None] * qf, (G, BMP, BD)), 1) * scale
        dve = tl.sum(tl.reshape(pe[:, None] * do, (G, BMP, BD)), 1)
        ng = n0 + tl.arange(0, G)
        poff = ((ng * H + h) * NQB + qb) * D
        pmask = (ng < NSEQ)[:, None] & dm[None, :]
        tl.store(DKE + poff[:, None] + d[None, :], dke, mask=pmask)
        tl.store(DVE + poff[:, None] + d[None, :], dve, mask=pmask)
    dq = _unrotate(dq * scale, COS, SIN, posq, d, qmask, D, HAS_ROT, BM, BD)
    qoff = _line_offset(nq, N_INNER, sq_o, sq_i) + h * sq_h + posq * sq_p
    tl.store(DQ + qoff[:, None] + d[None, :] * sq_d, dq.to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, COS, SIN,
                   sq_o, sq_i, sq_h, sq_p, sq_d, sk_o, sk_i, sk_h, sk_p, sk_d, sg_o, sg_i, sg_h, sg_p, sg_d,
                   NSEQ, N_INNER, H, LQ, LK, D, NKB, qk_scale, scale,
                   HAS_ROT: tl.constexpr, G: tl.constexpr, BMP: tl.constexpr, BNP: tl.constexpr,
                   BD: tl.constexpr, PREC: tl.constexpr, F32: tl.constexpr):
    kb, h, n0 = _program(NKB, H, G)
    dt = tl.float32 if F32 else Q.dtype.element_ty  # dtype of the tl.dot operands
    BM: tl.constexpr = G * BMP
    BN: tl.constexpr = G * BNP
    d = tl.arange(0, BD)
    dm = d < D
    nk, posk, gk = _rows(kb, n0, BNP, G)
    vk = (nk < NSEQ) & (posk < LK)
    kmask = vk[:, None] & dm[None, :]
    koff = _line_offset(nk, N_INNER, sk_o, sk_i) + h * sk_h + posk * sk_p
    k = _load_rows(K, koff, d, sk_d, kmask, COS, SIN, posk, D, HAS_ROT, BN, BD).to(dt)
    v = tl.load(V + koff[:, None] + d[None, :] * sk_d, mask=kmask, other=0.0).to(dt)
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BD], dtype=tl.float32)
    for qb in range(0, tl.cdiv(LQ, BMP)):
        nq, posq, gq = _rows(qb, n0, BMP, G)
        vq = (nq < NSEQ) & (posq < LQ)
        qmask = vq[:, None] & dm[None, :]
        q = _load_rows(Q, _line_offset(nq, N_INNER, sq_o, sq_i) + h * sq_h + posq * sq_p, d, sq_d, qmask,
                       COS, SIN, posq, D, HAS_ROT, BM, BD).to(dt)
        goff = _line_offset(nq, N_INNER, sg_o, sg_i) + h * sg_h + posq * sg_p
        do = tl.load(DO + goff[:, None] + d[None, :] * sg_d, mask=qmask, other=0.0).to(dt)
        stat = (nq * H + h) * LQ + posq
        lse2 = tl.load(LSE + stat, mask=vq, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + stat, mask=vq, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
        ok = vk[:, None] & vq[None, :] & (gk[:, None] == gq[None, :])
        pt = tl.where(ok, tl.exp2(st - lse2[None, :]), 0.0)
        dv += tl.dot(pt.to(dt), do, input_precision=PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(dt), q, input_precision=PREC)
    dk = _unrotate(dk * scale, COS, SIN, posk, d, kmask, D, HAS_ROT, BN, BD)
    tl.store(DK + koff[:, None] + d[None, :] * sk_d, dk.to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + koff[:, None] + d[None, :] * sk_d, dv.to(DV.dtype.element_ty), mask=kmask)


_fit.staged(_attn_fwd)
_fit.staged(_attn_bwd_dq)
_fit.staged(_attn_bwd_dkdv)

# ---- launchers

Strides = Tuple[int, int, int, int, int]  # outer, inner, head, position, dim (elements)


@dataclass(frozen=True)
class Problem:
    """Sizes of one strided attention call: n_seq = n_outer * n_inner sequences of lk keys (lq <= lk
    queries: lq = 1 means only position 0 is queried), `heads` heads of width `dim`."""

    n_seq: int
    n_inner: int
    heads: int
    lq: int
    lk: int
    dim: int


@dataclass(frozen=True)
class Operand:
    """A view whose first element is element (0, 0, 0, 0, 0) of the operand, and its five strides."""

    tensor: Tensor
    strides: Strides


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not _ext.triton_interpreted() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _tiles(p: Problem, backward: bool, itemsize: int = 2) -> Tuple[int, int, int, int]:
    """(G, BMP, BNP, BD): short self-attention sequences are packed G to a tile (block-diagonal mask),
    longer ones are cut in BMP x BNP tiles. Every tile side is >= 16, the minimum of tl.dot.
    The float32 backward at head dim 128 uses 32-row tiles: with 64 rows its dq/dk/dv kernels need
    104-144 KB of shared memory even unpipelined, over the 100 KB of sm_86/sm_89 GPUs (RTX 30xx/40xx,
    L40); 32 rows fit (benchmarks/triton_compile.py --arch 89)."""
    bd = max(16, triton.next_power_of_2(p.dim))
    rows = 32 if (backward and itemsize >= 4 and bd >= 128) else 64
    if p.lq == p.lk and p.lk <= 32:
        lp = triton.next_power_of_2(p.lk)
        g = max(16 // lp, 1, min(rows // lp, triton.next_power_of_2(p.n_seq)))
        return g, lp, lp, bd
    big = 128 if (bd <= 64 and not backward and not _ext.triton_interpreted()) else rows
    bn = 64 if bd <= 64 or not backward else 32
    return (1, min(big, max(16, triton.next_power_of_2(p.lq))), min(bn, max(16, triton.next_power_of_2(p.lk))),
            bd)


def _f32_math(p: Problem) -> bool:
    """One query per sequence (the axis projections' first-query-only layer): every tl.dot in float32
    (ieee) on the float32 rotated q and k, so low-precision inputs lose nothing beyond their own rounding.
    Such calls are tiny (one query row per sequence), so the slower dots cost nothing that shows."""
    return p.lq == 1


def _warps(rows: int, bd: int, backward: bool = False) -> int:
    """Warps per program. The backward kernels hold two float32 accumulators beside P, dP and dS: at 64
    tile rows and head dim 64 or more, four warps need over 255 registers a thread and spill (dk/dv of the
    base time and space axes, 48-72 bytes a thread; 816 at head dim 128, sm_90). Eight warps do not spill
    at head dim 64 and spill 64 bytes at 128, and the multiprocessor holds as many warps or more
    (benchmarks/triton_compile.py). The timing of both is in the kernel benchmark's sweep rows."""
    if backward:
        return TUNING["backward_warps"] or (8 if rows * bd >= 64 * 64 else 4)
    return 8 if rows * bd >= 128 * 64 else 4


# Launch settings that override the rules in _stages and _warps, for measurements only: the kernel
# benchmark times the attention cases at other settings through tuning() (benchmarks/kernels_attention.py).
TUNING: dict = {"num_stages": None, "backward_warps": None}


@contextlib.contextmanager
def tuning(num_stages: Optional[int] = None, backward_warps: Optional[int] = None):
    """Within the block: kernels whose main loop runs more than once are compiled with `num_stages` stages,
    the backward kernels with `backward_warps` warps (None: the usual rule)."""
    old = dict(TUNING)
    TUNING.update(num_stages=num_stages, backward_warps=backward_warps)
    try:
        yield
    finally:
        TUNING.update(old)


def _stages(trips: int) -> int:
    """Software-pipelining depth of a kernel whose main loop runs `trips` times. A single trip (every key,
    or every query, of the tile's sequences in one block: the time axis, the axis projections) has
    nothing to overlap, and a deeper pipeline only multiplies the shared-memory buffers of K, V and the
    rotary tables: at the base time axis (bf16, d 64) 120 KB and 129 KB per program for the forward and
    dk/dv kernels against 228 KB per multiprocessor, so one program per multiprocessor
    (benchmarks/triton_compile.py)."""
    return 1 if trips == 1 else (TUNING["num_stages"] or 3)


class _device:
    def __init__(self, t: Tensor):
        self.ctx = torch.cuda.device(t.device) if t.is_cuda else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx is not None else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


def _extra_args(extra: Optional[Tuple[Tensor, Tensor]], dummy: Tensor) -> Tuple[Tensor, Tensor, Tuple[int, ...]]:
    """The extra token's k and v with one shared set of (sequence, head, dim) strides (stride 0 kept for
    a token broadcast over sequences); `dummy` stands in when there is none."""
    if extra is None:
        return dummy, dummy, (0, 0, 0)
    ek, ev = extra
    if tuple(ek.stride()) != tuple(ev.stride()):
        ek, ev = ek.contiguous(), ev.contiguous()
    strides = tuple(ek.stride())
    if ek.shape[0] == 1:  # one token shared by every sequence
        strides = (0,) + strides[1:]
    return ek, ev, strides


def forward(q: Operand, k: Operand, v: Operand, out: Operand, p: Problem, extra: Optional[Tuple[Tensor, Tensor]],
            rotary: Optional[Tuple[Tensor, Tensor]], scale: float) -> Tensor:
    """Writes the attention output into `out` and returns the natural-log LSE (n_seq, heads, lq), fp32.
    `extra`: (k, v) of shape (n_seq, heads, dim), or (1, heads, dim) for one token shared by every
    sequence, any strides; `rotary`: (cos, signed sin) (lk, dim) fp32."""
    if k.strides != v.strides:
        raise ValueError("strided attention: k and v must share strides")
    lse = torch.empty((p.n_seq, p.heads, p.lq), device=q.tensor.device, dtype=torch.float32)
    g, bmp, bnp, bd = _tiles(p, backward=False)
    f32 = _f32_math(p)
    nqb, nkb = triton.cdiv(p.lq, bmp), triton.cdiv(p.lk, bnp)
    ek, ev, es = _extra_args(extra, lse)
    cos, sin = rotary if rotary is not None else (lse, lse)
    grid = (triton.cdiv(p.n_seq, g) * p.heads * nqb,)
    with _device(q.tensor):
        _fit.launch(_attn_fwd, grid, (q.tensor, k.tensor, v.tensor, out.tensor, lse, ek, ev, cos, sin,
                                      *q.strides, *k.strides, *out.strides, *es,
                                      p.n_seq, p.n_inner, p.heads, p.lq, p.lk, p.dim, nqb, scale * LOG2E),
                    _stages(nkb),
                    HAS_EXTRA=extra is not None, HAS_ROT=rotary is not None, G=g, BMP=bmp, BNP=bnp, BD=bd,
                    PREC="ieee" if f32 else _precision(q.tensor.dtype), F32=f32, num_warps=_warps(g * bmp, bd))
    return lse


def backward(q: Operand, k: Operand, v: Operand, out: Operand, dout: Operand, dq: Operand, dk: Operand,
             dv: Operand, lse: Tensor, p: Problem, extra: Optional[Tuple[Tensor, Tensor]],
             rotary: Optional[Tuple[Tensor, Tensor]], scale: float) -> Optional[Tuple[Tensor, Tensor]]:
    """Writes dq, dk, dv (dq/dk/dv share q/k/v's strides); returns the extra token's (dk, dv) fp32, shaped
    like it ((n_seq or 1, heads, dim)), when `extra` is given."""
    if k.strides != v.strides or dq.strides != q.strides or dk.strides != k.strides or dv.strides != k.strides:
        raise ValueError("strided attention backward: gradients must share their inputs' strides")
    dev = q.tensor.device
    delta = torch.empty((p.n_seq, p.heads, p.lq), device=dev, dtype=torch.float32)
    g, bmp, bnp, bd = _tiles(p, backward=True, itemsize=q.tensor.element_size())
    nqb, nkb = triton.cdiv(p.lq, bmp), triton.cdiv(p.lk, bnp)
    f32 = _f32_math(p)
    prec = "ieee" if f32 else _precision(q.tensor.dtype)
    cos, sin = rotary if rotary is not None else (delta, delta)
    ek, ev, es = _extra_args(extra, delta)
    if extra is not None:
        dke = torch.empty((p.n_seq, p.heads, nqb, p.dim), device=dev, dtype=torch.float32)
        dve = torch.empty_like(dke)
    else:
        dke = dve = delta
    common = dict(HAS_ROT=rotary is not None, G=g, BMP=bmp, BNP=bnp, BD=bd, PREC=prec, F32=f32)
    lse = lse.contiguous()
    with _device(q.tensor):
        _fit.launch(_attn_bwd_dq, (triton.cdiv(p.n_seq, g) * p.heads * nqb,),
                    (q.tensor, k.tensor, v.tensor, out.tensor, dout.tensor, dq.tensor, lse, delta, ek, ev, dke, dve,
                     cos, sin, *q.strides, *k.strides, *out.strides, *dout.strides, *es,
                     p.n_seq, p.n_inner, p.heads, p.lq, p.lk, p.dim, nqb, scale * LOG2E, scale),
                    _stages(nkb),
                    HAS_EXTRA=extra is not None, ONE_KB=nkb == 1, num_warps=_warps(g * bmp, bd, True), **common)
        _fit.launch(_attn_bwd_dkdv, (triton.cdiv(p.n_seq, g) * p.heads * nkb,),
                    (q.tensor, k.tensor, v.tensor, dout.tensor, dk.tensor, dv.tensor, lse, delta, cos, sin,
                     *q.strides, *k.strides, *dout.strides,
                     p.n_seq, p.n_inner, p.heads, p.lq, p.lk, p.dim, nkb, scale * LOG2E, scale),
                    _stages(nqb), num_warps=_warps(g * bnp, bd, True), **common)
    if extra is None:
        return None
    if extra[0].shape[0] == 1:  # shared token: summed over the sequences in float32
        return dke.sum((0, 2)).unsqueeze(0), dve.sum((0, 2)).unsqueeze(0)
    return dke.sum(2), dve.sum(2)
