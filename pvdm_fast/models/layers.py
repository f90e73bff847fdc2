"""Transformer pieces of the PVDM autoencoder: rotary tables, divided space-time attention, GEGLU.

Module and parameter names follow the official checkpoints (`layers.N.M.norm`, `.fn.to_qkv`,
`.fn.to_out.0`, `.fn.net.0`/`.net.3`, `frame_rot_emb.inv_freqs`, `image_rot_emb.scales`) so that
official state dicts load by name. Attention runs through `scaled_dot_product_attention`: no score
matrix is kept for backward, which is what makes the official model need ~27 GB per clip.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvdm_fast import ops
from pvdm_fast.ops.rotary import rotary_cos_sin


class PreNorm(nn.Module):
    """LayerNorm then `fn` (the residual is added by the caller)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn


# ---- rotary embeddings (PVDM_SPEC.md "Rotary embeddings")

class TimeRotary(nn.Module):
    """Frame positions n: angles n * inv_freq_j (j < d/2), laid out as the d/2 angles twice over.

    Rotating adjacent pairs (2i, 2i+1) with this layout mixes two frequencies in one pair; the
    official weights were trained with it, so it is reproduced exactly."""

    def __init__(self, dim_head: int):
        super().__init__()
        inv = 1.0 / (10000 ** (torch.arange(0, dim_head, 2, dtype=torch.float64) / dim_head))
        self.register_buffer("inv_freqs", inv.float())

    def angles(self, frames: int) -> Tensor:
        n = torch.arange(frames, dtype=torch.float64, device=self.inv_freqs.device)
        a = n[:, None] * self.inv_freqs.double()[None]
        return torch.cat([a, a], dim=-1)  # (frames, dim_head)


class SpaceRotary(nn.Module):
    """Row y and column x in linspace(-1, 1): angles (y * s_k * pi, then x * s_k * pi), each repeated
    twice consecutively, s_k = 2^linspace(0, log2(5), dim_head / 4)."""

    def __init__(self, dim_head: int, max_freq: float = 10.0):
        super().__init__()
        scales = torch.logspace(0.0, math.log(max_freq / 2) / math.log(2), dim_head // 4, base=2,
                                dtype=torch.float64)
        self.register_buffer("scales", scales.float())

    def angles(self, height: int, width: int) -> Tensor:
        dev = self.scales.device
        s = self.scales.double() * math.pi
        ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64, device=dev)[:, None] * s
        xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64, device=dev)[:, None] * s
        a = torch.cat([ys[:, None, :].expand(height, width, -1), xs[None, :, :].expand(height, width, -1)], -1)
        return a.reshape(height * width, -1).repeat_interleave(2, dim=-1)  # (h*w, dim_head)


class RotaryTable(NamedTuple):
    """The pair rotation of the angles in two forms. Real: (cos, signed sin), shaped (..., d/2, 2) to
    match x's adjacent pairs. Complex, for float32/float64 activations: each pair a + ib is mapped to
    alpha * z + beta * conj(z), shaped (..., d/2); beta is None when both dims of every pair share
    one angle (the map is then a plain complex multiply by the phase alpha = cos + i sin)."""
    cos: Tensor
    sin: Tensor
    alpha: Tensor | None = None
    beta: Tensor | None = None


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def rotary_tables(angles: Tensor, dtype: torch.dtype, shared_pairs: bool = False) -> RotaryTable:
    """The tables of `angles` (..., d), computed in float64 and cast to the activation dtype.

    The real sin table carries the sign of each pair slot (-sin for the even dim, +sin for the odd
    one), so applying it is two multiplies and an add. With angles (t0, t1) on a pair, the map
    (a, b) -> (a cos t0 - b sin t0, b cos t1 + a sin t1) is alpha z + beta conj(z) with
    alpha = (cos t0 + cos t1)/2 + i (sin t0 + sin t1)/2 and beta = (cos t0 - cos t1)/2 + i (sin t1 - sin t0)/2.
    `shared_pairs`: the caller's layout repeats each angle over its pair (space rotary), so beta = 0."""
    cos, sin = angles.cos(), angles.sin()
    sign = torch.tensor([-1.0, 1.0], dtype=angles.dtype, device=angles.device)
    table = RotaryTable(cos.unflatten(-1, (-1, 2)).to(dtype), (sin.unflatten(-1, (-1, 2)) * sign).to(dtype))
    if dtype not in _COMPLEX:
        return table
    c0, c1, s0, s1 = cos[..., 0::2], cos[..., 1::2], sin[..., 0::2], sin[..., 1::2]
    if shared_pairs:
        return table._replace(alpha=torch.complex(c0, s0).to(_COMPLEX[dtype]))
    alpha = torch.complex((c0 + c1) / 2, (s0 + s1) / 2).to(_COMPLEX[dtype])
    beta = torch.complex((c0 - c1) / 2, (s1 - s0) / 2).to(_COMPLEX[dtype])
    return table._replace(alpha=alpha, beta=beta)


def apply_rotary(x: Tensor, table: tuple[Tensor, ...]) -> Tensor:
    """out_2i = x_2i cos_2i - x_2i+1 sin_2i, out_2i+1 = x_2i+1 cos_2i+1 + x_2i sin_2i+1.

    With complex tables and a float32/float64 x whose pairs are adjacent in memory, each pair is one
    complex number and the rotation one or two complex multiplies, each a single pass forward and
    backward (on a 2-core CPU ~1.2x-1.5x faster per attention call than the real form, which copies a
    flipped x). Otherwise (bf16/fp16, odd strides) each pair is multiplied with itself and with its
    swapped copy; unlike strided even/odd slices this has a backward with no zero-filled buffers."""
    pairs = x.unflatten(-1, (-1, 2))
    alpha = table[2] if len(table) > 2 else None
    if alpha is not None and _COMPLEX.get(x.dtype) == alpha.dtype and _complex_viewable(pairs):
        z = torch.view_as_complex(pairs)
        beta = table[3] if len(table) > 3 else None
        out = z * alpha if beta is None else torch.addcmul(z * alpha, z.conj(), beta)
        return torch.view_as_real(out).flatten(-2)
    cos, sin = table[0], table[1]
    return (pairs * cos + pairs.flip(-1) * sin).flatten(-2)


def _complex_viewable(pairs: Tensor) -> bool:
    # view_as_complex needs the pair dim contiguous, and the offset and the other strides even
    return (pairs.stride(-1) == 1 and pairs.storage_offset() % 2 == 0
            and all(st % 2 == 0 for st, n in zip(pairs.stride()[:-1], pairs.shape[:-1]) if n > 1))


# ---- attention

class GridAttention(nn.Module):
    """Multi-head attention along one axis of a (B, T, h, w, C) token grid (time or space)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: Tensor, axis: str, rotary: tuple[Tensor, ...], fused: bool = False) -> Tensor:
        """`rotary` broadcasts over the attended positions as laid out here: (T, d/2, 2) for time,
        (h, w, d/2, 2) for space; with `fused`, the (L, d) tables of `ops.rotary.rotary_cos_sin` for
        the strided attention kernel, which reads q, k, v where the projection wrote them and rotates
        inside. Returns (B, T, h, w, C), possibly as a permuted view."""
        if fused:
            return self.to_out(ops.axial_attention(self.to_qkv(x), self.heads, axis, rotary=rotary))
        b, t, h, w, _ = x.shape
        # q, k and v from two matmuls with row blocks of the one official weight: the backward then
        # sums two input gradients instead of concatenating a (tokens, 3 * inner) output gradient
        w_qk, w_v = self.to_qkv.weight.split([2 * self.heads * self.dim_head, self.heads * self.dim_head])
        qk = F.linear(x, w_qk).view(b, t, h, w, 2, self.heads, self.dim_head)
        v = F.linear(x, w_v).view(b, t, h, w, 1, self.heads, self.dim_head)
        if axis == "time":   # every spatial position attends over its frames
            order, lead, positions = (4, 0, 2, 3, 5, 1, 6), (b, h, w), (t,)
        else:                # every frame attends over its h*w positions (row-major)
            order, lead, positions = (4, 0, 1, 5, 2, 3, 6), (b, t), (h, w)
        # the rotary output keeps qkv's memory order, so flattening it is a view except for time
        # attention at batch > 1 (b and (h, w) are not adjacent there); SDPA takes the strided views
        batch, length = math.prod(lead), math.prod(positions)
        qk = apply_rotary(qk.permute(order), rotary).reshape(2, batch, self.heads, length, self.dim_head)
        q, k = qk.unbind(0)
        v = v.permute(order).reshape(batch, self.heads, length, self.dim_head)
        o = F.scaled_dot_product_attention(q, k, v)  # scale dim_head^-0.5, as the official q scaling
        o = self.to_out(o.transpose(1, 2).reshape(*lead, *positions, -1))
        return o.permute(0, 3, 1, 2, 4) if axis == "time" else o


class GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)


class GEGLUFeedForward(nn.Module):
    """Linear(C -> 2*mult*C), a * GELU(gate), Linear(mult*C -> C); `net.0` / `net.3` as official."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TimeSformerBlock(nn.ModuleList):
    """[time attention, space attention, feed-forward], each pre-LayerNorm with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__([PreNorm(dim, GridAttention(dim, heads, dim_head)),
                          PreNorm(dim, GridAttention(dim, heads, dim_head)),
                          PreNorm(dim, GEGLUFeedForward(dim))])

    def forward(self, x: Tensor, rot_time: tuple[Tensor, ...], rot_space: tuple[Tensor, ...],
                normed: Tensor | None = None, fused: tuple[bool, bool] = (False, False)) -> Tensor:
        """`normed`: LayerNorm(x) with this block's first norm, when a fused op already computed it;
        `fused`: whether the time and the space attention run the fused kernel (see GridAttention)."""
        time, space, ff = self
        x = x + time.fn(time.norm(x) if normed is None else normed, "time", rot_time, fused[0])
        x = x + space.fn(space.norm(x), "space", rot_space, fused[1])
        return x + ff.fn(ff.norm(x))


class TimeSformer(nn.Module):
    """A stack of divided space-time blocks on a (B, T, h, w, C) grid with rotary positions."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, checkpoint: bool = False):
        super().__init__()
        self.frame_rot_emb = TimeRotary(dim_head)
        self.image_rot_emb = SpaceRotary(dim_head)
        self.layers = nn.ModuleList([TimeSformerBlock(dim, heads, dim_head) for _ in range(depth)])
        self.checkpoint = checkpoint

    def run_blocks(self, x: Tensor, normed_first: Tensor | None = None) -> Tensor:
        _, t, h, w, _ = x.shape
        # per axis, as measured on this GPU: the fused kernel, or SDPA where it was faster
        fused = (ops.fused("axial_attention", x, case=f"time-L{t}"),
                 ops.fused("axial_attention", x, case=f"space-L{h * w}"))
        # fused kernels take (L, d) float32 tables and rotate in float32
        rot_time = rotary_cos_sin(self.frame_rot_emb.angles(t)) if fused[0] else \
            rotary_tables(self.frame_rot_emb.angles(t), x.dtype)
        rot_space = rotary_cos_sin(self.image_rot_emb.angles(h, w)) if fused[1] else \
            rotary_tables(self.image_rot_emb.angles(h, w).view(h, w, -1), x.dtype, shared_pairs=True)
        for i, block in enumerate(self.layers):
            normed = normed_first if i == 0 else None
            if self.checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, rot_time, rot_space, normed, fused,
                                                      use_reentrant=False)
            else:
                x = block(x, rot_time, rot_space, normed, fused)
        return x


# ---- the axis projections' small ViT-style transformer

class SequenceAttention(nn.Module):
    """Plain multi-head self-attention over (N, L, C) sequences (bias-free qkv, `to_out` with bias)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        project = not (heads == 1 and dim_head == dim)  # the official layer skips the projection then
        self.to_out = nn.Sequential(nn.Linear(inner, dim)) if project else nn.Identity()

    def forward(self, x: Tensor, first_query_only: bool = False) -> Tensor:
        n, length, _ = x.shape
        if ops.fused("axial_attention", x, case=f"{'first' if first_query_only else 'sequence'}-L{length}"):
            o = ops.axial_attention(self.to_qkv(x), self.heads, "sequence", first_query_only=first_query_only)
            return self.to_out(o[:, None] if first_query_only else o)
        q, k, v = self.to_qkv(x).view(n, length, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        if first_query_only:
            q = q[:, :, :1]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(o.transpose(1, 2).reshape(n, q.shape[2], -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AxisTransformer(nn.Module):
    """Pre-norm transformer whose output is read at position 0 only: the last layer computes just
    that query (and its feed-forward), which gives the same value at a fraction of the cost."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([PreNorm(dim, SequenceAttention(dim, heads, dim_head)), PreNorm(dim, MLP(dim, mlp_dim))])
            for _ in range(depth)
        ])

    def first_output(self, x: Tensor, normed_first: Tensor | None = None) -> Tensor:
        """(N, L, C) sequences -> (N, C): the transformer output at position 0."""
        last = len(self.layers) - 1
        for i, (attn, ff) in enumerate(self.layers):
            y = normed_first if (i == 0 and normed_first is not None) else attn.norm(x)
            if i == last:
                x = x[:, :1] + attn.fn(y, first_query_only=True)
            else:
                x = x + attn.fn(y)
            x = x + ff.fn(ff.norm(x))
        return x[:, 0]
