"""Triton launch of the UNet's legacy-order attention: q, k, v read straight from qkv (B, 3C, L).

The channels of head h are rows [h*3*ch, (h+1)*3*ch) of qkv, in the order [q, k, v]; a channel row
holds the L tokens. Whether qkv is channels-first (token stride 1) or a transposed token-major tensor,
its strides go to the strided kernels in pvdm_fast/ops/triton/axial_attention.py unchanged, and the
output is written in the same memory order, so neither side needs a transpose.
"""

from __future__ import annotations

from typing import List

from torch import Tensor

from pvdm_fast.ops.triton import axial_attention as core


def _qkv_operands(qkv: Tensor, heads: int) -> List[core.Operand]:
    u = qkv.unflatten(1, (heads, 3, -1))                 # (B, heads, [q|k|v], ch, L)
    sb, sh, _, sc, sl = u.stride()
    return [core.Operand(u.select(2, i), (sb, 0, sh, sl, sc)) for i in range(3)]


def _out_operand(out: Tensor, heads: int) -> core.Operand:
    u = out.unflatten(1, (heads, -1))                    # (B, heads, ch, L)
    sb, sh, sc, sl = u.stride()
    return core.Operand(u, (sb, 0, sh, sl, sc))


def _problem(qkv: Tensor, heads: int) -> core.Problem:
    b, width, length = qkv.shape
    return core.Problem(b, 1, heads, length, length, width // (3 * heads))


def forward(qkv: Tensor, out: Tensor, heads: int, scale: float) -> Tensor:
    """Writes softmax(q.k * scale) v into `out` (B, C, L); returns the LSE (B, heads, L) in float32."""
    q, k, v = _qkv_operands(qkv, heads)
    return core.forward(q, k, v, _out_operand(out, heads), _problem(qkv, heads), None, None, scale)


def backward(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, dqkv: Tensor, heads: int, scale: float) -> None:
    """Writes the gradient of qkv into `dqkv` (same strides as qkv); dout must share out's strides."""
    q, k, v = _qkv_operands(qkv, heads)
    dq, dk, dv = _qkv_operands(dqkv, heads)
    core.backward(q, k, v, _out_operand(out, heads), _out_operand(dout, heads), dq, dk, dv, lse,
                  _problem(qkv, heads), None, None, scale)
