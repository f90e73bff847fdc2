"""Attention kernels: axial_attention (autoencoder) and joint_attention (UNet) against SDPA and torch.compile.

    python benchmarks/kernels_attention.py [--quick] [--json PATH]

Every competitor starts from the layout the model holds and ends in the layout the next projection
reads, so the SDPA rows include their copies: for the autoencoder, the (B, T, h, w, 3*heads*d) qkv is
split into heads, regrouped along the axis and rotated before SDPA, and the output is merged back to
tokens; for the UNet, the channels-first (B, 3C, L) qkv is transposed to (B, heads, L, ch) and the
output back to (B, C, L). SDPA runs with each of its flash / memory-efficient / cuDNN backends forced,
and "torch.compile" compiles that whole path (SDPA choosing its backend).

TFLOP/s counts the matmul work, 4 * sequences * heads * Lq * Lk * d for the forward and 3.5x that for
forward + backward (FlashAttention's convention: the backward's recomputation of QK^T counted); GB/s counts
the qkv the pass needs read (only query 0 with first_query_only) and the output written (forward) plus the
output, its gradient and that qkv re-read and dqkv written (backward).
Shapes: the base autoencoder (B 4, T 16, 32x32 grid, 8 heads x 64; axis projections C 384 -> 4 heads
x 48 over T+1 and h+1 tokens) and the UNet's joint attention at batch 16 (L 2048/512/128, C 256/512/1024).
"""
from __future__ import annotations

import math
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _bench  # noqa: E402
from pvdm_fast.ops.triton.axial_attention import tuning  # noqa: E402

# Launch settings timed besides the launcher's own (rows "triton num_stages=N", "triton backward_warps=N";
# informational, `auto` does not read them): other pipelining depths where the kernels loop more than
# once, and the four backward warps used before the register counts of benchmarks/triton_compile.py.
SWEEP_STAGES = (2, 4)
SWEEP_BACKWARD_WARPS = (4,)


def _tuned(fn, **settings):
    def run(x):
        return fn(x)
    run.tuning = settings
    return run


def sweep_settings(multi_trip: bool) -> list[dict]:
    """The tuning() settings timed for one case besides the default."""
    stages = [dict(num_stages=n) for n in SWEEP_STAGES] if multi_trip else []
    return stages + [dict(backward_warps=n) for n in SWEEP_BACKWARD_WARPS]


def _triton_impls(fused, multi_trip: bool) -> dict:
    impls = {"triton": fused}
    for settings in sweep_settings(multi_trip):
        name = " ".join(f"{k}={v}" for k, v in settings.items())
        impls[f"triton {name}"] = _tuned(fused, **settings)
    return impls


# ---- the reference paths SDPA needs (copies included)

def _axial_sdpa(qkv, heads, axis, rotary, first):
    """The autoencoder's unfused route: head split, axis regrouping, rotary, SDPA, merge to tokens."""
    from pvdm_fast.ops.axial_attention import _from_lines, _to_lines, lines_and_length
    from pvdm_fast.ops.rotary import apply_rotary_reference

    lines, length = lines_and_length(qkv.shape, axis)
    d = qkv.shape[-1] // (3 * heads)
    seq = _to_lines(qkv, axis).reshape(math.prod(lines), length, 3, heads, d)
    q, k, v = (t.transpose(1, 2) for t in seq.unbind(2))
    if rotary is not None:
        cos, sin = (t.to(qkv.dtype) for t in rotary)
        q, k = apply_rotary_reference(q, cos, sin), apply_rotary_reference(k, cos, sin)
    if first:
        q = q[:, :, :1]
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    if first:
        return o.reshape(*lines, -1)
    return _from_lines(o.reshape(*lines, length, -1), axis, qkv.shape).contiguous()


def _joint_sdpa(qkv, heads):
    """The UNet's SDPA path (unet_blocks.legacy_attention) on the token-major (B, L, 3C) qkv the model holds;
    `qkv` is its (B, 3C, L) transpose, exactly what the model hands the fused kernel."""
    from pvdm_fast.models.unet_blocks import legacy_attention

    return legacy_attention(qkv.transpose(1, 2), heads).transpose(1, 2)


# ---- cases

def _axial_cases(quick: bool) -> list[dict]:
    b, (t, h, w), heads, d = 4, (16, 32, 32), 8, 64
    c_axis, axis_heads = 384, 4
    ad = c_axis // 8
    cases = [
        dict(op="axial_attention time+rot", shape=(b, t, h, w), heads=heads, d=d, axis="time", rot="time",
             case=f"time-L{t}"),
        dict(op="axial_attention space+rot", shape=(b, t, h, w), heads=heads, d=d, axis="space", rot="space",
             case=f"space-L{h * w}"),
        dict(op="axial_attention axis-proj xy", shape=(b * h * w, t + 1), heads=axis_heads, d=ad, axis="sequence",
             case=f"sequence-L{t + 1}"),
        dict(op="axial_attention axis-proj xy first", shape=(b * h * w, t + 1), heads=axis_heads, d=ad,
             axis="sequence", first=True, case=f"first-L{t + 1}"),
        dict(op="axial_attention axis-proj yt", shape=(b * t * w, h + 1), heads=axis_heads, d=ad, axis="sequence",
             case=f"sequence-L{h + 1}"),
    ]
    return cases[:1] if quick else cases


def _joint_cases(quick: bool) -> list[dict]:
    b, heads = 16, 8
    cases = [dict(op="joint_attention", batch=b, channels=c, length=n, heads=heads)
             for c, n in ((256, 2048), (512, 512), (1024, 128))]
    return cases[:1] if quick else cases


def _rotary(case, dev):
    from pvdm_fast.ops.rotary import rotary_cos_sin, space_angles, space_scales, time_angles, time_inv_freqs

    if case.get("rot") == "time":
        return tuple(x.to(dev) for x in rotary_cos_sin(time_angles(time_inv_freqs(case["d"]), case["shape"][1])))
    if case.get("rot") == "space":
        _, _, h, w = case["shape"]
        return tuple(x.to(dev) for x in rotary_cos_sin(space_angles(space_scales(case["d"]), h, w)))
    return None


def _measure(op, case, shape, dtype, impls, make_input, flops_f, bytes_f, bytes_b):
    """Rows of every implementation and pass; `case` is the key the models ask `ops.fused` about."""
    rows = []
    x0 = make_input()
    out0 = impls["sdpa (auto)"](x0)
    dout = torch.randn_like(out0)
    for name, fn in impls.items():
        if not _bench.measured(name):
            continue
        xg = x0.detach().clone().requires_grad_(True)
        for pass_ in ("fwd", "fwd+bwd"):
            settings = getattr(fn, "tuning", {})
            if pass_ == "fwd":
                def call(fn=fn, settings=settings):
                    with torch.no_grad(), tuning(**settings):
                        return fn(x0)
            else:
                def call(fn=fn, xg=xg, settings=settings):
                    with tuning(**settings):  # autograd.grad: no accumulation into xg.grad between calls
                        torch.autograd.grad(fn(xg), xg, dout)
            flops = flops_f if pass_ == "fwd" else 3.5 * flops_f
            nbytes = bytes_f if pass_ == "fwd" else bytes_f + bytes_b
            row = {"op": op, "case": case, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "pass": pass_,
                   "backend": name}
            try:
                ms = _bench.do_bench_ms(call)
            except Exception as exc:  # an SDPA backend refusing a shape is a result, not a crash
                rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:120]})
                continue
            rows.append({**row, "ms": ms, "TFLOP/s": flops / (ms * 1e-3) / 1e12,
                         "GB/s": nbytes / (ms * 1e-3) / 1e9})
    best_sdpa = {}
    for r in rows:
        if "ms" in r and r["backend"].startswith("sdpa"):
            best_sdpa[r["pass"]] = min(best_sdpa.get(r["pass"], math.inf), r["ms"])
    for r in rows:
        if "ms" in r and r["pass"] in best_sdpa:
            r["speedup_vs_best_sdpa"] = best_sdpa[r["pass"]] / r["ms"]
    return rows


def _sdpa_impls(path):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def forced(backend):
        def run(x):
            with sdpa_kernel([backend]):
                return path(x)
        return run

    return {"sdpa (auto)": path, "sdpa flash": forced(SDPBackend.FLASH_ATTENTION),
            "sdpa efficient": forced(SDPBackend.EFFICIENT_ATTENTION),
            "sdpa cudnn": forced(SDPBackend.CUDNN_ATTENTION),
            "torch.compile": torch.compile(path, dynamic=False) if _bench.measured("torch.compile") else None}


def rows(quick: bool = False) -> list[dict]:
    from pvdm_fast import ops
    from pvdm_fast.ops.axial_attention import lines_and_length

    dev, dtype = torch.device("cuda"), torch.bfloat16
    out_rows = []
    for case in _axial_cases(quick):
        heads, d, axis, first = case["heads"], case["d"], case["axis"], case.get("first", False)
        rotary = _rotary(case, dev)
        lines, length = lines_and_length((*case["shape"], 1), axis)
        n = math.prod(lines)
        lq = 1 if first else length

        def fused(x, heads=heads, axis=axis, rotary=rotary, first=first):
            with ops.use_backend("triton"):
                return ops.axial_attention(x, heads, axis, rotary=rotary, first_query_only=first)

        impls = {**_sdpa_impls(lambda x, heads=heads, axis=axis, rotary=rotary, first=first:
                               _axial_sdpa(x, heads, axis, rotary, first)), **_triton_impls(fused, length > 64)}
        elt = torch.finfo(dtype).bits // 8
        qkv_bytes = n * length * 3 * heads * d * elt
        read_bytes = n * (lq + 2 * length) * heads * d * elt  # q of the queries computed, all of k and v
        out_bytes = n * lq * heads * d * elt
        out_rows += _measure(case["op"], case["case"], "x".join(map(str, case["shape"])) + f" {heads}x{d}", dtype,
                             impls, lambda: torch.randn(*case["shape"], 3 * heads * d, device=dev, dtype=dtype),
                             4.0 * n * heads * lq * length * d, read_bytes + out_bytes,
                             read_bytes + qkv_bytes + 2 * out_bytes)
    for case in _joint_cases(quick):
        b, c, length, heads = case["batch"], case["channels"], case["length"], case["heads"]

        def fused_joint(x, heads=heads):
            with ops.use_backend("triton"):
                return ops.joint_attention(x, heads)

        impls = {**_sdpa_impls(lambda x, heads=heads: _joint_sdpa(x, heads)), **_triton_impls(fused_joint, length > 64)}
        elt = torch.finfo(dtype).bits // 8
        qkv_bytes, out_bytes = b * 3 * c * length * elt, b * c * length * elt
        out_rows += _measure(case["op"], f"L{length}", f"B{b} C{c} L{length} {heads} heads", dtype, impls,
                             lambda: torch.randn(b, length, 3 * c, device=dev, dtype=dtype).transpose(1, 2),
                             4.0 * b * length * length * c, qkv_bytes + out_bytes, 2 * qkv_bytes + 2 * out_bytes)
    return out_rows


if __name__ == "__main__":
    args = _bench.parser(__doc__.split("\n\n")[0]).parse_args()
    if _bench.require_gpu("kernels_attention.py"):
        table = rows(args.quick)
        _bench.print_table(table)
        _bench.write_json(args.json, table)
