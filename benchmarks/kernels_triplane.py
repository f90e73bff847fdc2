"""Triplane kernels: the decoder input (triplane_sum + first LayerNorm) and the axis gathers, against
torch eager and torch.compile of the unfused path.

    python benchmarks/kernels_triplane.py [--quick] [--json PATH]

Bytes counted (the minimum any implementation must move): forward, the three projected planes read
once and V and LayerNorm(V) written once (the gathers: x read once, S and LayerNorm(S) written once);
backward, dV and dY read once and the plane gradients written once (the gathers: dS, dY read, dx
written). Shapes: the base config (B 4, T 16, 32x32 grid, C 384) and 128x128 with patch 4 (same grid).

What the fused backends move beyond that count, so the share of copy bandwidth they can reach
(arithmetic at the base shapes, in units of one (B, T*h*w, C) tensor; counted, forward+backward: 2.25
for the decode alone, 4.25 with the LayerNorm, 6.1-6.3 for a gather):
- triplane_decode (no LayerNorm, issue 9's count): the plane gradients are written in float32, about
  2.4, so up to ~95%.
- triplane_decode+ln: the backward reads dY twice. The LayerNorm's per-token means need every channel
  (a row pass), while the axis sums run over 16-byte channel slices (a program per batch item and
  slice, so that it holds whole sums). Add the float32 plane gradients and the per-token statistics:
  about 5.7, so at most ~75% of copy bandwidth at these counts, unless the second read of dY hits L2
  (the Triton backward orders and hints its loads for that; dY is 25 MB at batch 2, an H100 has 50 MB of L2).
- axis_gather+ln: the backward reads x again to rebuild the LayerNorm input, plus ~0.2 of partial
  sums: about 7.3-7.5, at most ~84%.
"""
from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _bench  # noqa: E402

# Issue 9's two base shapes, 256x256 with patch 8 and 128x128 with patch 4, give the same token grid
# (16 x 32 x 32, C 384): one measurement serves both.
SHAPES = [dict(name="256px-p8 = 128px-p4", batch=4, grid=(16, 32, 32), channels=384)]


def _time_pair(fwd, bwd_inputs, leaves):
    """(forward ms, forward+backward ms) of a callable returning outputs to back-propagate into; the
    gradients of `leaves` are returned, not accumulated into .grad (no extra pass per timed call)."""
    def both():
        outs = fwd()
        torch.autograd.grad(outs, leaves, bwd_inputs)
    with torch.no_grad():
        ms_f, host_f = _bench.do_bench_ms(fwd), _bench.host_ms(fwd)
    return (ms_f, host_f), (_bench.do_bench_ms(both), _bench.host_ms(both))


def _rows_for(op, shape, nbytes_f, nbytes_b, candidates, copy_gbs, dtype, leaves):
    rows = []
    for backend, fwd, grads in candidates:
        if not _bench.measured(backend):
            continue
        try:
            ms_f, ms_fb = _time_pair(fwd, grads, leaves)
        except Exception as exc:  # a backend missing on this device is a row, not a crash
            rows.append(dict(op=op, shape=shape, dtype=str(dtype).replace("torch.", ""), backend=backend,
                             error=f"{type(exc).__name__}: {exc}"[:120]))
            continue
        for pas, (ms, host), nbytes in (("fwd", ms_f, nbytes_f), ("fwd+bwd", ms_fb, nbytes_f + nbytes_b)):
            gbs = nbytes / (ms * 1e-3) / 1e9
            rows.append({"op": op, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "pass": pas,
                         "backend": backend, "ms": ms, "GB/s": gbs, "pct_of_copy_bw": 100.0 * gbs / copy_gbs,
                         "host_ms": host, "host_bound": host > 0.7 * ms})
    return rows


def _decode_rows(case, dtype, copy_gbs, norm=True):
    """triplane_decode with the decoder's first LayerNorm fused (V and LayerNorm(V)), or without it (V
    alone: the count issue 9 states, planes read and V written once, dV read once)."""
    from pvdm_fast.ops import triplane_decode, triplane_decode_reference, use_backend

    dev = torch.device("cuda")
    b, (t, h, w), c = case["batch"], case["grid"], case["channels"]
    length = h * w + t * w + t * h
    latent = torch.randn(b, 4, length, device=dev, dtype=dtype).tanh().requires_grad_()
    ws = [torch.randn(c, 4, 1, 1, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)]
    bs = [torch.randn(c, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)]
    ln = {}
    if norm:
        ln = dict(norm_weight=torch.ones(c, device=dev, dtype=dtype, requires_grad=True),
                  norm_bias=torch.zeros(c, device=dev, dtype=dtype, requires_grad=True))
    n, elt = t * h * w, torch.tensor([], dtype=dtype).element_size()
    outs = 2 if norm else 1
    grads = [torch.randn(b, n, c, device=dev, dtype=dtype) for _ in range(outs)]
    e = latent.shape[1]  # issue 9's count: the (latent) planes read once, V written once; dV read once
    nbytes_f = (length * b * e + outs * b * n * c) * elt
    nbytes_b = (outs * b * n * c + length * b * e) * elt

    def fused(backend):
        def run():
            with use_backend(backend):
                return triplane_decode(latent, (t, h, w), ws, bs, **ln)
        return run

    eager = lambda: triplane_decode_reference(latent, (t, h, w), ws, bs, **ln)  # noqa: E731
    compiled_fn = torch.compile(triplane_decode_reference)
    compiled = lambda: compiled_fn(latent, (t, h, w), ws, bs, **ln)  # noqa: E731
    cands = [("cuda", fused("cuda"), grads), ("triton", fused("triton"), grads), ("torch eager", eager, grads),
             ("torch.compile", compiled, grads)]
    return _rows_for("triplane_decode+ln" if norm else "triplane_decode",
                     f"{case['name']} B{b} T{t} {h}x{w} C{c}", nbytes_f, nbytes_b, cands, copy_gbs, dtype,
                     [latent, *ws, *bs, *ln.values()])


def _gather_rows(case, axis, dtype, copy_gbs):
    from pvdm_fast.ops import axis_gather, axis_gather_unfused, use_backend
    from pvdm_fast.ops.axis_gather import AXES, axis_geometry

    dev = torch.device("cuda")
    b, grid, c = case["batch"], case["grid"], case["channels"]
    n = grid[0] * grid[1] * grid[2]
    a = axis_geometry(grid, AXES.index(axis))[0]
    x = torch.randn(b, n, c, device=dev, dtype=dtype, requires_grad=True)
    token = torch.randn(1, 1, c, device=dev, dtype=dtype, requires_grad=True)
    pos = torch.randn(1, a + 1, c, device=dev, dtype=dtype, requires_grad=True)
    gamma = torch.ones(c, device=dev, dtype=dtype, requires_grad=True)
    beta = torch.zeros(c, device=dev, dtype=dtype, requires_grad=True)
    rows_out = b * n // a * (a + 1)
    grads = [torch.randn(rows_out // (a + 1), a + 1, c, device=dev, dtype=dtype) for _ in range(2)]
    elt = x.element_size()
    nbytes_f = (b * n * c + 2 * rows_out * c) * elt
    nbytes_b = (2 * rows_out * c + b * n * c) * elt

    def fused(backend):
        def run():
            with use_backend(backend):
                return axis_gather(x, grid, axis, token, pos, norm_weight=gamma, norm_bias=beta)
        return run

    eager = lambda: axis_gather_unfused(x, grid, axis, token, pos, norm_weight=gamma, norm_bias=beta)  # noqa
    compiled_fn = torch.compile(axis_gather_unfused)
    compiled = lambda: compiled_fn(x, grid, axis, token, pos, norm_weight=gamma, norm_bias=beta)  # noqa: E731
    cands = [("cuda", fused("cuda"), grads), ("triton", fused("triton"), grads), ("torch eager", eager, grads),
             ("torch.compile", compiled, grads)]
    return _rows_for(f"axis_gather[{axis}]+ln", f"{case['name']} B{b} T{grid[0]} {grid[1]}x{grid[2]} C{c}",
                     nbytes_f, nbytes_b, cands, copy_gbs, dtype, [x, token, pos, gamma, beta])


def rows(quick: bool = False) -> list[dict]:
    copy_gbs = _bench.copy_bandwidth_gbs(torch.device("cuda"))
    out = []
    shapes = SHAPES[:1] if quick else SHAPES
    out += _decode_rows(SHAPES[0], torch.bfloat16, copy_gbs, norm=False)
    for case in shapes:
        out += _decode_rows(case, torch.bfloat16, copy_gbs)
        for axis in (("xy",) if quick else ("xy", "yt", "xt")):
            out += _gather_rows(case, axis, torch.bfloat16, copy_gbs)
    return out


if __name__ == "__main__":
    args = _bench.parser(__doc__.split("\n\n")[0]).parse_args()
    if _bench.require_gpu("kernels_triplane.py"):
        result = rows(args.quick)
        _bench.print_table(result)
        _bench.write_json(args.json, result, copy_gbs=_bench.copy_bandwidth_gbs())
