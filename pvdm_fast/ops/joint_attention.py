"""The UNet's multi-head self-attention on qkv (B, 3C, L) in the "legacy" channel order.

Per head h the 3C channels hold [q (ch), k (ch), v (ch)] at rows h*3*ch onwards (ch = C / heads). Scores
are q.k with q and k each scaled by ch^-1/4 (i.e. q.k / sqrt(ch)), softmax in float32, output (B, C, L)
with channel h*ch + c, ready for the following 1x1 conv. It serves both the joint attention over the
tokens of all three planes (L = h*w + T*w + T*h) and the per-plane attention inside blocks.

qkv may be channels-first (token stride 1, what a 1x1 conv returns) or the transpose of a token-major
(B, L, 3C) tensor (what a linear on tokens returns); the output has the same memory order as qkv, so
`out.transpose(1, 2)` is contiguous exactly when qkv came from a token-major tensor.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from pvdm_fast.ops import dispatch

_LOW = (torch.float32, torch.float16, torch.bfloat16)
SPEC = dispatch.register(dispatch.OpSpec(
    "joint_attention",
    {"reference": _LOW + (torch.float64,), "triton": _LOW},
))


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _token_major(qkv: Tensor) -> bool:
    return qkv.stride(2) != 1 and qkv.shape[2] > 1


def _empty_out(qkv: Tensor, heads: int) -> Tensor:
    b, width, length = qkv.shape
    if _token_major(qkv):
        return qkv.new_empty((b, length, width // 3)).transpose(1, 2)
    return qkv.new_empty((b, width // 3, length))


def joint_attention_reference(qkv: Tensor, heads: int) -> Tuple[Tensor, Tensor]:
    """As the official legacy attention: q, k scaled by ch^-1/4 and multiplied in the input dtype, softmax
    in float32 (float64 for float64 input), p @ v in the input dtype. Returns (out (B, C, L), LSE (B, heads, L))."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    s = ch ** -0.25
    w = torch.einsum("bct,bcs->bts", q * s, k * s).to(_compute_dtype(qkv))
    lse = torch.logsumexp(w, dim=-1).reshape(b, heads, length)
    a = torch.einsum("bts,bcs->bct", torch.softmax(w, dim=-1).to(qkv.dtype), v)
    return a.reshape(b, heads * ch, length), lse


def joint_attention_backward_reference(dout: Tensor, qkv: Tensor, heads: int) -> Tensor:
    """Closed-form dqkv in float32 (float64): dV = P^T dO, dS = P * (dP - rowsum(P * dP)), dQ = dS K / sqrt(ch),
    dK = dS^T Q / sqrt(ch), laid out as qkv."""
    cdt = _compute_dtype(qkv)
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.to(cdt).reshape(b * heads, 3 * ch, length).split(ch, dim=1)    # (BH, ch, L)
    scale = ch ** -0.5
    p = torch.softmax(torch.einsum("bct,bcs->bts", q, k) * scale, dim=-1)         # (BH, Lq, Lk)
    do = dout.to(cdt).reshape(b * heads, ch, length)
    dv = torch.einsum("bts,bct->bcs", p, do)
    dp = torch.einsum("bct,bcs->bts", do, v)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    dq = torch.einsum("bts,bcs->bct", ds, k) * scale
    dk = torch.einsum("bts,bct->bcs", ds, q) * scale
    return torch.cat([dq, dk, dv], dim=1).reshape(b, width, length)


# ---- backends

def _triton_forward(qkv: Tensor, heads: int) -> Tuple[Tensor, Tensor]:
    from pvdm_fast.ops.triton import joint_attention as tri

    out = _empty_out(qkv, heads)
    lse = tri.forward(qkv, out, heads, (qkv.shape[1] // (3 * heads)) ** -0.5)
    return out, lse


def _triton_backward(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, heads: int) -> Tensor:
    from pvdm_fast.ops.triton import joint_attention as tri

    dqkv = torch.empty_like(qkv)  # same strides as qkv (dense: checked by the public function)
    if dout.stride() != out.stride():
        dout = torch.empty_like(out).copy_(dout)
    tri.backward(dout.to(qkv.dtype), qkv, out, lse.contiguous(), dqkv, heads,
                 (qkv.shape[1] // (3 * heads)) ** -0.5)
    return dqkv


def _reference_backward(dout, qkv, out, lse, heads):
    return joint_attention_backward_reference(dout, qkv, heads)


_FORWARD = {"reference": joint_attention_reference, "triton": _triton_forward}
_BACKWARD = {"reference": _reference_backward, "triton": _triton_backward}


# ---- custom ops

def _like_layout(t: Tensor, template: Tensor) -> Tensor:
    return t if t.stride() == template.stride() else torch.empty_like(template).copy_(t)


@torch.library.custom_op("pvdm::joint_attention", mutates_args=())
def _joint_op(qkv: Tensor, heads: int, backend: str) -> Tuple[Tensor, Tensor]:
    out, lse = _FORWARD[backend](qkv, heads)
    return _like_layout(out, _empty_out(qkv, heads)), lse.contiguous()


@_joint_op.register_fake
def _(qkv, heads, backend):
    b, _, length = qkv.shape
    return _empty_out(qkv, heads), qkv.new_empty((b, heads, length), dtype=_compute_dtype(qkv))


@torch.library.custom_op("pvdm::joint_attention_backward", mutates_args=())
def _joint_bwd_op(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, heads: int, backend: str) -> Tensor:
    dqkv = _BACKWARD[backend](dout, qkv, out, lse, heads)
    return _like_layout(dqkv.to(qkv.dtype), qkv)


@_joint_bwd_op.register_fake
def _(dout, qkv, out, lse, heads, backend):
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output):
    qkv, heads, backend = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.config = (heads, backend)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    qkv, out, lse = ctx.saved_tensors
    heads, backend = ctx.config
    return _joint_bwd_op(dout, qkv, out, lse, heads, backend), None, None


_joint_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function

def joint_attention(qkv: Tensor, heads: int) -> Tensor:
    """Legacy-order multi-head attention: qkv (B, 3C, L) -> (B, C, L) (see the module docstring)."""
    if qkv.dim() != 3:
        raise ValueError(f"joint_attention: qkv must be (B, 3C, L), got shape {tuple(qkv.shape)}")
    if not qkv.is_floating_point():
        raise ValueError(f"joint_attention: qkv must be a float tensor, got {qkv.dtype}")
    b, width, length = qkv.shape
    if heads <= 0 or width % (3 * heads):
        raise ValueError(f"joint_attention: {width} qkv channels are not 3 * heads ({heads}) * head dim; "
                         "num_heads must divide the block's channels")
    if b == 0 or length == 0:
        raise ValueError(f"joint_attention: empty qkv {tuple(qkv.shape)}")
    if not (qkv.is_contiguous() or qkv.transpose(1, 2).is_contiguous()):
        qkv = qkv.contiguous()  # the kernels and the gradient take qkv's strides as they are: keep them dense
    backend = dispatch.select(SPEC, qkv)
    out, _ = _joint_op(qkv, int(heads), backend)
    return out
