"""Axial attention on the autoencoder's packed qkv, read in place (no head split, regrouping or rotary copies).

qkv is what `to_qkv` returns: a (B, T, h, w, 3 * heads * d) token grid whose last dim is (q|k|v, head, d),
or (N, L, 3 * heads * d) sequences. `axis` picks the sequences attended over:
- "time":   for every (b, row, col) over its T frames        -> lines (B, h, w), length T
- "space":  for every (b, t) over its h*w positions row-major -> lines (B, T),    length h*w
- "height": for every (b, t, col) over its h rows             -> lines (B, T, w), length h
- "width":  for every (b, t, row) over its w columns          -> lines (B, T, h), length w
- "sequence": (N, L, 3*heads*d) input, lines (N,), length L
The output is in the token layout `to_out` reads: (B, T, h, w, heads*d) (or (N, L, heads*d)); with
`first_query_only` only position 0 is queried and the output is (*lines, heads*d).

Options: `rotary` = (cos, signed sin) tables (L, d) from pvdm_fast.ops.rotary, applied to q and k (not to
an extra token); `scale` (default d^-0.5, the official q scaling); `extra_k` / `extra_v`, one more key and
value per line appended after the axis tokens, shaped (*lines, heads, d) or anything broadcasting to it
(e.g. (heads, d) for a token shared by every line). Softmax statistics are float32 (float64 on the
reference for float64 input).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from pvdm_fast.ops import dispatch
from pvdm_fast.ops.rotary import apply_rotary_reference, swap_pairs

_LOW = (torch.float32, torch.float16, torch.bfloat16)
SPEC = dispatch.register(dispatch.OpSpec(
    "axial_attention",
    {"reference": _LOW + (torch.float64,), "triton": _LOW},
))
AXES = ("time", "space", "height", "width", "sequence")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---- geometry

def lines_and_length(shape: Sequence[int], axis: str) -> Tuple[Tuple[int, ...], int]:
    """(shape of the lines, attended length) for a qkv of `shape` and `axis`."""
    if axis == "sequence":
        return (shape[0],), shape[1]
    b, t, h, w = shape[:4]
    return {"time": ((b, h, w), t), "space": ((b, t), h * w), "height": ((b, t, w), h),
            "width": ((b, t, h), w)}[axis]


def token_strides(shape: Sequence[int], axis: str) -> Tuple[int, int, int, int]:
    """(n_inner, outer, inner, position) in tokens of a contiguous grid: line n starts at token
    (n // n_inner) * outer + (n % n_inner) * inner."""
    if axis == "sequence":
        return 1, shape[1], 0, 1
    _, t, h, w = shape[:4]
    return {"time": (h * w, t * h * w, 1, h * w), "space": (t, t * h * w, h * w, 1),
            "height": (w, h * w, 1, w), "width": (h, h * w, w, 1)}[axis]


def _to_lines(x: Tensor, axis: str) -> Tensor:
    """(B, T, h, w, ...) or (N, L, ...) -> (*lines, L, ...) (a permuted view; reference only)."""
    if axis == "sequence":
        return x
    b, t, h, w = x.shape[:4]
    if axis == "time":
        return x.movedim(1, 3)
    if axis == "space":
        return x.flatten(2, 3)
    return x.movedim(2, 3) if axis == "height" else x


def _from_lines(y: Tensor, axis: str, shape: Sequence[int]) -> Tensor:
    """Inverse of `_to_lines` for a (*lines, L, C) tensor."""
    if axis == "sequence":
        return y
    b, t, h, w = shape[:4]
    if axis == "time":
        return y.movedim(3, 1)
    if axis == "space":
        return y.unflatten(2, (h, w))
    return y.movedim(3, 2) if axis == "height" else y


# ---- reference

def _split(qkv: Tensor, heads: int, axis: str) -> Tuple[Tensor, Tensor, Tensor, Tuple[int, ...]]:
    """q, k, v as (N, heads, L, d) and the lines' shape."""
    lines, length = lines_and_length(qkv.shape, axis)
    seq = _to_lines(qkv, axis).reshape(math.prod(lines), length, 3, heads, -1)
    q, k, v = (t.transpose(1, 2) for t in seq.unbind(2))
    return q, k, v, lines


def axial_attention_reference(qkv: Tensor, heads: int, axis: str, rotary: Optional[Tuple[Tensor, Tensor]] = None,
                              scale: Optional[float] = None, extra_k: Optional[Tensor] = None,
                              extra_v: Optional[Tensor] = None,
                              first_query_only: bool = False) -> Tuple[Tensor, Tensor]:
    """The plainest version, as the official model computes it: rotary in float32 (float64) rounded back
    to the input dtype, scores and p @ v as matmuls in the input dtype, softmax in float32 (float64).
    extra_k / extra_v: (N, heads, d), or (1, heads, d) for one token shared by the N lines.
    Returns (output in qkv's dtype, LSE (N, heads, Lq))."""
    cdt = _compute_dtype(qkv)
    q, k, v, lines = _split(qkv, heads, axis)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if rotary is not None:
        q = apply_rotary_reference(q.to(cdt), *rotary).to(qkv.dtype)
        k = apply_rotary_reference(k.to(cdt), *rotary).to(qkv.dtype)
    if extra_k is not None:
        n = k.shape[0]
        k = torch.cat([k, extra_k.to(k.dtype).expand(n, -1, -1)[:, :, None]], dim=2)
        v = torch.cat([v, extra_v.to(v.dtype).expand(n, -1, -1)[:, :, None]], dim=2)
    if first_query_only:
        q = q[:, :, :1]
    s = (q @ k.transpose(-1, -2)).to(cdt) * scale
    lse = torch.logsumexp(s, dim=-1)
    o = (torch.softmax(s, dim=-1).to(v.dtype) @ v).transpose(1, 2).flatten(2)  # (N, Lq, heads*d)
    if first_query_only:
        return o.reshape(*lines, -1), lse
    return _from_lines(o.reshape(*lines, o.shape[1], -1), axis, qkv.shape), lse


def axial_attention_backward_reference(dout: Tensor, qkv: Tensor, extra_k: Optional[Tensor],
                                       extra_v: Optional[Tensor], rotary: Optional[Tuple[Tensor, Tensor]],
                                       heads: int, axis: str, scale: float,
                                       first_query_only: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Closed-form gradients (dqkv, d extra_k, d extra_v) in float32 (float64), from recomputed
    probabilities: dV = P^T dO, dS = P * (dO V^T - rowsum(P * dO V^T)), dQ = scale dS K, dK = scale dS^T Q,
    then the transposed rotation on dQ and dK."""
    cdt = _compute_dtype(qkv)
    q, k, v, lines = _split(qkv.to(cdt), heads, axis)
    length = k.shape[2]
    if rotary is not None:
        q, k = apply_rotary_reference(q, *rotary), apply_rotary_reference(k, *rotary)
    if extra_k is not None:
        n = k.shape[0]
        k = torch.cat([k, extra_k.to(cdt).expand(n, -1, -1)[:, :, None]], dim=2)
        v = torch.cat([v, extra_v.to(cdt).expand(n, -1, -1)[:, :, None]], dim=2)
    qq = q[:, :, :1] if first_query_only else q
    p = torch.softmax((qq @ k.transpose(-1, -2)) * scale, dim=-1)
    n, _, lq, d = qq.shape
    if first_query_only:
        do = dout.to(cdt).reshape(n, 1, heads, d).transpose(1, 2)
    else:
        do = _to_lines(dout.to(cdt), axis).reshape(n, lq, heads, d).transpose(1, 2)
    dv = p.transpose(-1, -2) @ do
    dp = do @ v.transpose(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    dq_rows = (ds @ k) * scale
    dk = (ds.transpose(-1, -2) @ qq) * scale
    dq = torch.zeros_like(q)
    dq[:, :, :lq] = dq_rows
    dek = dev = None
    if extra_k is not None:
        dek, dev, dk, dv = dk[:, :, length], dv[:, :, length], dk[:, :, :length], dv[:, :, :length]
        if extra_k.shape[0] == 1:  # one token shared by every line: its gradient sums over them
            dek, dev = dek.sum(0, keepdim=True), dev.sum(0, keepdim=True)
    if rotary is not None:
        cos, sin = (t.to(cdt) for t in rotary)
        dq, dk = (g * cos + swap_pairs(g * sin) for g in (dq, dk))
    packed = torch.stack([dq, dk, dv], dim=3).permute(0, 2, 3, 1, 4)  # (N, L, 3, heads, d)
    dqkv = _from_lines(packed.reshape(*lines, length, -1), axis, qkv.shape)
    return dqkv, dek, dev


# ---- triton backend

def _triton_geometry(qkv: Tensor, heads: int, axis: str, first_query_only: bool):
    from pvdm_fast.ops.triton.axial_attention import Problem

    lines, length = lines_and_length(qkv.shape, axis)
    n_inner, t_o, t_i, t_p = token_strides(qkv.shape, axis)
    d = qkv.shape[-1] // (3 * heads)
    tok = 3 * heads * d

    def strides(width: int, first: bool) -> Tuple[int, int, int, int, int]:
        if first:
            return (n_inner * width, width, d, 0, 1)
        return (t_o * width, t_i * width, d, t_p * width, 1)

    problem = Problem(math.prod(lines), n_inner, heads, 1 if first_query_only else length, length, d)
    out_shape = (*lines, heads * d) if first_query_only else (*qkv.shape[:-1], heads * d)
    return problem, strides(tok, False), strides(heads * d, first_query_only), out_shape


def _operands(t: Tensor, strides, parts: int, width: int):
    from pvdm_fast.ops.triton.axial_attention import Operand

    flat = t.reshape(-1)
    return [Operand(flat[i * width:], strides) for i in range(parts)]


def _triton_forward(qkv, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only):
    from pvdm_fast.ops.triton import axial_attention as tri

    problem, s_in, s_out, out_shape = _triton_geometry(qkv, heads, axis, first_query_only)
    out = torch.empty(out_shape, device=qkv.device, dtype=qkv.dtype)
    hd = heads * problem.dim
    q, k, v = _operands(qkv, s_in, 3, hd)
    (o,) = _operands(out, s_out, 1, 0)
    extra = (extra_k, extra_v) if extra_k is not None else None
    rotary = (cos, sin) if cos is not None else None
    lse = tri.forward(q, k, v, o, problem, extra, rotary, scale)
    return out, lse


def _triton_backward(dout, qkv, out, lse, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only):
    from pvdm_fast.ops.triton import axial_attention as tri

    problem, s_in, s_out, _ = _triton_geometry(qkv, heads, axis, first_query_only)
    hd = heads * problem.dim
    # with one query per line only q's position 0 receives a gradient
    dqkv = torch.zeros_like(qkv) if first_query_only else torch.empty_like(qkv)
    q, k, v = _operands(qkv, s_in, 3, hd)
    dq, dk, dv = _operands(dqkv, s_in, 3, hd)
    (o,) = _operands(out, s_out, 1, 0)
    (do,) = _operands(dout.contiguous().to(qkv.dtype), s_out, 1, 0)
    extra = (extra_k, extra_v) if extra_k is not None else None
    rotary = (cos, sin) if cos is not None else None
    de = tri.backward(q, k, v, o, do, dq, dk, dv, lse, problem, extra, rotary, scale)
    return (dqkv,) + (de if de is not None else (None, None))


def _reference_forward(qkv, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only):
    rotary = (cos, sin) if cos is not None else None
    return axial_attention_reference(qkv, heads, axis, rotary, scale, extra_k, extra_v, first_query_only)


def _reference_backward(dout, qkv, out, lse, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only):
    rotary = (cos, sin) if cos is not None else None
    return axial_attention_backward_reference(dout, qkv, extra_k, extra_v, rotary, heads, axis, scale,
                                              first_query_only)


_FORWARD = {"reference": _reference_forward, "triton": _triton_forward}
_BACKWARD = {"reference": _reference_backward, "triton": _triton_backward}


# ---- custom ops

def _out_shape(qkv: Tensor, heads: int, axis: str, first_query_only: bool) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    lines, length = lines_and_length(qkv.shape, axis)
    width = qkv.shape[-1] // 3
    out = (*lines, width) if first_query_only else (*qkv.shape[:-1], width)
    return out, (math.prod(lines), heads, 1 if first_query_only else length)


@torch.library.custom_op("pvdm::axial_attention", mutates_args=())
def _attn_op(qkv: Tensor, extra_k: Optional[Tensor], extra_v: Optional[Tensor], cos: Optional[Tensor],
             sin: Optional[Tensor], heads: int, axis: str, scale: float, first_query_only: bool,
             backend: str) -> Tuple[Tensor, Tensor]:
    out, lse = _FORWARD[backend](qkv, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only)
    return out.contiguous(), lse.contiguous()


@_attn_op.register_fake
def _(qkv, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only, backend):
    out, stats = _out_shape(qkv, heads, axis, first_query_only)
    return qkv.new_empty(out), qkv.new_empty(stats, dtype=_compute_dtype(qkv))


@torch.library.custom_op("pvdm::axial_attention_backward", mutates_args=())
def _attn_bwd_op(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, extra_k: Optional[Tensor],
                 extra_v: Optional[Tensor], cos: Optional[Tensor], sin: Optional[Tensor], heads: int, axis: str,
                 scale: float, first_query_only: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    dqkv, dek, dev = _BACKWARD[backend](dout, qkv, out, lse, extra_k, extra_v, cos, sin, heads, axis, scale,
                                        first_query_only)
    if extra_k is None:  # custom ops cannot return None: one-element stand-ins (zero-size ones share a null
        dek, dev = qkv.new_zeros((1,)), qkv.new_zeros((1,))  # pointer, which the alias check rejects)
    else:
        dek, dev = dek.to(extra_k.dtype).contiguous(), dev.to(extra_v.dtype).contiguous()
    return dqkv.to(qkv.dtype).contiguous(), dek, dev


@_attn_bwd_op.register_fake
def _(dout, qkv, out, lse, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only, backend):
    if extra_k is None:
        return torch.empty_like(qkv), qkv.new_empty((1,)), qkv.new_empty((1,))
    return (torch.empty_like(qkv), extra_k.new_empty(extra_k.shape), extra_v.new_empty(extra_v.shape))


def _setup_context(ctx, inputs, output):
    qkv, extra_k, extra_v, cos, sin, heads, axis, scale, first_query_only, backend = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, extra_k, extra_v, cos, sin)
    ctx.config = (heads, axis, scale, first_query_only, backend)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    qkv, out, lse, extra_k, extra_v, cos, sin = ctx.saved_tensors
    heads, axis, scale, first_query_only, backend = ctx.config
    dqkv, dek, dev = _attn_bwd_op(dout, qkv, out, lse, extra_k, extra_v, cos, sin, heads, axis, scale,
                                  first_query_only, backend)
    has_extra = extra_k is not None
    return (dqkv, dek if has_extra else None, dev if has_extra else None, None, None, None, None, None, None, None)


_attn_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function

def _check(qkv: Tensor, heads: int, axis: str) -> int:
    if axis not in AXES:
        raise ValueError(f"axial_attention: axis must be one of {', '.join(AXES)}, got {axis!r}")
    want = 3 if axis == "sequence" else 5
    layout = "(N, L, 3*heads*d)" if axis == "sequence" else "(B, T, h, w, 3*heads*d)"
    if qkv.dim() != want:
        raise ValueError(f"axial_attention: axis {axis!r} needs qkv shaped {layout}, got {tuple(qkv.shape)}")
    if not qkv.is_floating_point():
        raise ValueError(f"axial_attention: qkv must be a float tensor, got {qkv.dtype}")
    if heads <= 0 or qkv.shape[-1] % (3 * heads):
        raise ValueError(f"axial_attention: the last dim {qkv.shape[-1]} is not 3 * heads ({heads}) * head dim")
    if any(s == 0 for s in qkv.shape):
        raise ValueError(f"axial_attention: empty qkv {tuple(qkv.shape)}")
    return qkv.shape[-1] // (3 * heads)


def _extra(t: Optional[Tensor], name: str, qkv: Tensor, lines: Tuple[int, ...], heads: int, d: int) -> Optional[Tensor]:
    if t is None:
        return None
    if t.dtype != qkv.dtype or t.device != qkv.device:
        raise ValueError(f"axial_attention: {name} must match qkv's dtype and device ({qkv.dtype}, {qkv.device}), "
                         f"got {t.dtype}, {t.device}")
    try:
        full = torch.broadcast_to(t, (*lines, heads, d))
    except RuntimeError:
        raise ValueError(f"axial_attention: {name} of shape {tuple(t.shape)} does not broadcast to the lines "
                         f"x heads x head dim {(*lines, heads, d)}") from None
    if all(n == 1 for n in t.shape[:-2]) and math.prod(lines) > 1:
        # one token for every line: passed once as (1, heads, d), so its gradient is summed over the
        # lines in float32 inside the op and rounded once, not rounded per line and then summed
        return torch.broadcast_to(t, (*([1] * len(lines)), heads, d)).reshape(1, heads, d)
    return full.reshape(math.prod(lines), heads, d)


def _rotary(rotary: Optional[Tuple[Tensor, Tensor]], length: int, d: int, qkv: Tensor):
    if rotary is None:
        return None, None
    if len(rotary) != 2:
        raise ValueError("axial_attention: rotary must be (cos, signed sin) from pvdm_fast.ops.rotary.rotary_cos_sin")
    cos, sin = rotary
    if tuple(cos.shape) != (length, d) or tuple(sin.shape) != (length, d):
        raise ValueError(f"axial_attention: rotary tables must be (attended length, head dim) = {(length, d)}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if d % 2:
        raise ValueError(f"axial_attention: rotary needs an even head dim, got {d}")
    tdt = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    return cos.to(device=qkv.device, dtype=tdt).contiguous(), sin.to(device=qkv.device, dtype=tdt).contiguous()


def axial_attention(qkv: Tensor, heads: int, axis: str, *, rotary: Optional[Tuple[Tensor, Tensor]] = None,
                    scale: Optional[float] = None, extra_k: Optional[Tensor] = None,
                    extra_v: Optional[Tensor] = None, first_query_only: bool = False) -> Tensor:
    """Multi-head attention along `axis` of the packed qkv (see the module docstring for layouts).

    Returns (B, T, h, w, heads*d) (or (N, L, heads*d)); with first_query_only, (*lines, heads*d)."""
    d = _check(qkv, heads, axis)
    if (extra_k is None) != (extra_v is None):
        raise ValueError("axial_attention: give both extra_k and extra_v, or neither")
    lines, length = lines_and_length(qkv.shape, axis)
    qkv = qkv.contiguous()
    ek, ev = _extra(extra_k, "extra_k", qkv, lines, heads, d), _extra(extra_v, "extra_v", qkv, lines, heads, d)
    if ek is not None and ek.shape[0] != ev.shape[0]:  # one shared, the other per line: both per line
        n = math.prod(lines)
        ek, ev = ek.expand(n, -1, -1), ev.expand(n, -1, -1)
    cos, sin = _rotary(rotary, length, d, qkv)
    backend = dispatch.select(SPEC, qkv)
    out, _ = _attn_op(qkv, ek, ev, cos, sin, int(heads), axis, float(d ** -0.5 if scale is None else scale),
                      bool(first_query_only), backend)
    return out
