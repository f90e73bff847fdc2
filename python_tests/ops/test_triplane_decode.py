"""triplane_decode / triplane_sum: every backend against the float64 truth, gradients of the planes,
the post projections and the fused LayerNorm, opcheck, compile, and the CUDA launcher's validation."""

import pytest
import torch
import torch.nn.functional as F

from pvdm_fast.ops import _ext, triplane_decode, triplane_decode_reference, triplane_sum, use_backend

from ._launcher_cases import (assert_backend_matches, assert_compile_matches_eager, assert_fp32_matches,
                              assert_launcher_rejects, assert_launchers_need_gpu, assert_low_within_2x, needs_c,
                              rejection_cases)
from ._launcher_cases import tensor_arg as _arg
from tolerances import assert_fp32_close

# (B, T, h, w, C, E): odd grid sizes, C not a multiple of 8 (scalar path), and one aligned C.
CASES = [(2, 5, 7, 3, 37, 4), (1, 3, 2, 4, 16, 4)]
CPU_BACKENDS = ["reference", "triton"]


def _inputs(b, t, h, w, c, e, dtype, device="cpu"):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(device=device, dtype=dtype)

    latent = torch.tanh(rnd(b, e, h * w + t * w + t * h, s=2.0))
    weights = [rnd(c, e, 1, 1, s=0.5) for _ in range(3)]
    biases = [rnd(c, s=0.5) + k for k in range(3)]  # offsets: the LayerNorm sees a non-zero mean
    gamma, beta = 1 + rnd(c, s=0.3), rnd(c, s=0.3)
    n = t * h * w
    dv, dy = rnd(b, n, c), rnd(b, n, c)
    return latent, weights, biases, gamma, beta, dv, dy


# BASELINE: the low-precision 2x rule compares a backend with the same op on the reference backend in that
# dtype, not with triplane_decode_reference. The kernels compute the plane sum (and LayerNorm); the post
# projections and their weight gradients are torch's F.linear in every backend, while
# triplane_decode_reference runs them as conv2d. On the CPU the two round fp16/bf16 weight gradients
# differently: with one channel (4 values per weight gradient) F.linear's came out over 2x conv2d's in
# 5-10 % of random draws although the CUDA kernel's plane gradients were bit-identical to the reference's.
def _run(fn, backend, grid, latent, weights, biases, gamma, beta, dv, dy, norm):
    leaves = [x.clone().requires_grad_() for x in [latent, *weights, *biases, gamma, beta]]
    lat, ws, bs, gm, bt = leaves[0], leaves[1:4], leaves[4:7], leaves[7], leaves[8]
    with use_backend(backend):
        if norm:
            v, y = fn(lat, grid, ws, bs, norm_weight=gm, norm_bias=bt)
            (v * dv.to(v.dtype)).sum().add((y * dy.to(y.dtype)).sum()).backward()
            outs = [v, y]
        else:
            v = fn(lat, grid, ws, bs)
            v.backward(dv.to(v.dtype))
            outs = [v]
    grads = [x.grad for x in (leaves if norm else leaves[:7])]
    return [o.detach() for o in outs] + grads


def _truth(grid, latent, weights, biases, gamma, beta, dv, dy, norm):
    up = [x.double() for x in (latent, *weights, *biases, gamma, beta, dv, dy)]
    return _run(triplane_decode_reference, "reference", grid, up[0], up[1:4], up[4:7], up[7], up[8], up[9], up[10],
                norm)


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_float64_truth(case, backend, norm):
    b, t, h, w, c, e = case
    inputs = _inputs(b, t, h, w, c, e, torch.float32)
    got = _run(triplane_decode, backend, (t, h, w), *inputs, norm)
    assert_fp32_matches(got, _truth((t, h, w), *inputs, norm), backend)


@pytest.mark.parametrize("norm", [False, True])
def test_fp16_triton_within_twice_torch_error(norm):
    b, t, h, w, c, e = CASES[0]
    inputs = _inputs(b, t, h, w, c, e, torch.float16)
    got = _run(triplane_decode, "triton", (t, h, w), *inputs, norm)
    torch_fp16 = _run(triplane_decode, "reference", (t, h, w), *inputs, norm)  # see BASELINE
    assert_low_within_2x(got, torch_fp16, _truth((t, h, w), *inputs, norm), torch.float16, "triton fp16")


def test_volume_layout_is_t_row_col():
    # A latent whose planes encode their own coordinates: V at token (t, y, x) must read exactly
    # xy[y, x], yt[t, x] and xt[t, y], with identity projections and no bias.
    t, h, w = 3, 4, 5
    xy = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w) * 1.0
    yt = torch.arange(t * w, dtype=torch.float64).reshape(1, 1, t, w) * 100.0
    xt = torch.arange(t * h, dtype=torch.float64).reshape(1, 1, t, h) * 10000.0
    latent = torch.cat([p.flatten(2) for p in (xy, yt, xt)], 2)
    eye = [torch.ones(1, 1, 1, 1, dtype=torch.float64)] * 3
    zero = [torch.zeros(1, dtype=torch.float64)] * 3
    for backend in CPU_BACKENDS:
        with use_backend(backend):
            v = triplane_decode(latent if backend == "reference" else latent.float(), (t, h, w),
                                [e.to(latent.dtype if backend == "reference" else torch.float32) for e in eye],
                                [z.to(latent.dtype if backend == "reference" else torch.float32) for z in zero])
        for ti in range(t):
            for y in range(h):
                for x in range(w):
                    expected = xy[0, 0, y, x] + yt[0, 0, ti, x] + xt[0, 0, ti, y]
                    assert v[0, (ti * h + y) * w + x, 0].item() == expected.item(), (backend, ti, y, x)


def test_gradcheck_reference_float64():
    latent, weights, biases, gamma, beta, _, _ = _inputs(1, 2, 3, 2, 5, 4, torch.float64)
    args = [x.requires_grad_() for x in (latent, *weights, *biases, gamma, beta)]

    def fn(lat, w0, w1, w2, b0, b1, b2, gm, bt):
        v, y = triplane_decode(lat, (2, 3, 2), [w0, w1, w2], [b0, b1, b2], norm_weight=gm, norm_bias=bt)
        return v, y

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    b, t, h, w, c = 2, 3, 3, 2, 12
    planes = [torch.randn(b, h, w, c), torch.randn(b, t, w, c), torch.randn(b, t, h, c)]
    gamma, beta = torch.randn(c), torch.randn(c)
    for norm in (False, True):
        args = (*[p.requires_grad_() for p in planes], gamma if norm else None, beta if norm else None, 1e-5, backend)
        torch.library.opcheck(torch.ops.pvdm.triplane_sum.default, args)
        _, _, mean, rstd = torch.ops.pvdm.triplane_sum(*[a.detach() if torch.is_tensor(a) else a for a in args])
        dv = torch.randn(b, t * h * w, c)
        bwd = (dv, torch.randn_like(dv) if norm else None, *[p.detach() for p in planes], gamma if norm else None,
               mean, rstd, backend)
        torch.library.opcheck(torch.ops.pvdm.triplane_sum_backward.default, bwd)


class _Decoder(torch.nn.Module):
    """The decoder input as a model uses it: post convs, fused sum + first LayerNorm, one residual step."""

    def __init__(self, c=12, e=4, grid=(3, 3, 2)):
        super().__init__()
        self.grid = grid
        self.post = torch.nn.ModuleList(torch.nn.Conv2d(e, c, 1) for _ in range(3))
        self.norm = torch.nn.LayerNorm(c)
        self.proj = torch.nn.Linear(c, c)

    def forward(self, latent):
        v, y = triplane_decode(latent, self.grid, [p.weight for p in self.post], [p.bias for p in self.post],
                               norm_weight=self.norm.weight, norm_bias=self.norm.bias)
        return v + self.proj(y)


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = _Decoder()
    assert_compile_matches_eager(model, torch.randn(2, 4, 3 * 2 + 3 * 2 + 3 * 3, requires_grad=True))


def test_bad_inputs_raise_value_error():
    latent = torch.randn(1, 4, 2 * 3 + 4 * 3 + 4 * 2)
    ws, bs = [torch.randn(8, 4, 1, 1)] * 3, [torch.randn(8)] * 3
    with pytest.raises(ValueError, match="does not match grid"):
        triplane_decode(latent, (4, 2, 4), ws, bs)
    with pytest.raises(ValueError, match="three weights"):
        triplane_decode(latent, (4, 2, 3), ws[:2], bs)
    with pytest.raises(ValueError, match="post_yt weight"):
        triplane_decode(latent, (4, 2, 3), [ws[0], torch.randn(8, 3), ws[2]], bs)
    with pytest.raises(ValueError, match="both norm_weight and norm_bias"):
        triplane_decode(latent, (4, 2, 3), ws, bs, norm_weight=torch.ones(8))
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        triplane_decode(latent, (4, 2, 3), ws, bs, norm_weight=torch.ones(7), norm_bias=torch.zeros(7))
    with pytest.raises(ValueError, match="p_yt must have shape"):
        triplane_sum(torch.randn(1, 2, 3, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8))
    for grid in ((4, 2), (4, 2, 3, 1), (3.5, 2, 3), (4, 0, 3), (True, 2, 3)):  # 3.5 used to become 3
        with pytest.raises(ValueError, match="grid must be three positive integers"):
            triplane_decode(latent, grid, ws, bs)
    # weights on another device or in another dtype: garbage from a meta latent, torch's dtype error
    with pytest.raises(ValueError, match="post_xy weight is torch.float32 on cpu but the latent"):
        triplane_decode(latent.to("meta"), (4, 2, 3), ws, bs)
    with pytest.raises(ValueError, match="post_xy weight is torch.float64"):
        triplane_decode(latent, (4, 2, 3), [w.double() for w in ws], bs)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose
        assert triplane_decode(latent.bfloat16(), (4, 2, 3), ws, bs).shape == (1, 4 * 2 * 3, 8)


# ---- the raw CUDA launchers: validation runs before any CUDA call, so these run without a GPU

def _fwd_args(b=2, t=3, h=4, w=5, c=16, norm=True, dtype=torch.float16):
    n = t * h * w
    return dict(p_xy=_arg((b, h, w, c), dtype), p_yt=_arg((b, t, w, c), dtype), p_xt=_arg((b, t, h, c), dtype),
                gamma=_arg((c,)) if norm else None, beta=_arg((c,)) if norm else None, v=_arg((b, n, c), dtype),
                y=_arg((b, n, c), dtype) if norm else None, mean=_arg((b, n)) if norm else None,
                rstd=_arg((b, n)) if norm else None, eps=1e-5, stream=0)


def _bwd_args(b=2, t=3, h=4, w=5, c=16, norm=True, dtype=torch.float16):
    n = t * h * w
    f = lambda *s: _arg(s) if norm else None  # noqa: E731
    return dict(dv=_arg((b, n, c), dtype), dy=_arg((b, n, c), dtype) if norm else None,
                p_xy=_arg((b, h, w, c), dtype), p_yt=_arg((b, t, w, c), dtype), p_xt=_arg((b, t, h, c), dtype),
                gamma=f(c), mean=f(b, n), rstd=f(b, n), a1=f(b, n), a2=f(b, n), d_xy=_arg((b, h, w, c)),
                d_yt=_arg((b, t, w, c)), d_xt=_arg((b, t, h, c)), dgamma_part=f(b, c), dbeta_part=f(b, c), stream=0)


FWD_BAD = [
    ("p_xy", lambda a: a.update(p_xy=_arg((2, 4, 5, 16), torch.float64)), "p_xy must be float32, float16"),
    ("p_yt", lambda a: a.update(p_yt=_arg((2, 3, 5, 16), torch.float32)), "p_yt must be float16"),
    ("p_xt", lambda a: a.update(p_xt=_arg((2, 3, 5, 16), torch.float16)), r"p_xt must have shape \(2, 3, 4, 16\)"),
    ("p_xt", lambda a: a.update(p_xt=_arg((2, 3, 4, 16), torch.float16, strides=[192, 64, 1, 4])), "p_xt must be contiguous"),
    ("v", lambda a: a.update(v=_arg((2, 60, 15), torch.float16)), "v must have shape"),
    ("v", lambda a: a.update(v=_arg((2, 60, 16), torch.float16, strides=[1, 32, 2])), "v must be contiguous"),
    ("v", lambda a: a.update(v=_arg((2, 60, 16), torch.float16, ptr=0)), "v is a null pointer"),
    ("gamma", lambda a: a.update(gamma=_arg((16,), torch.float16)), "gamma must be float32"),
    ("beta", lambda a: a.update(beta=None), "both gamma and beta"),
    ("y", lambda a: a.update(y=None), "y is required"),
    ("mean", lambda a: a.update(mean=_arg((2, 59))), "mean must have shape"),
    ("rstd", lambda a: a.update(rstd=_arg((2, 60), torch.float16)), "rstd must be float32"),
    ("eps", lambda a: a.update(eps=-1.0), "eps must be finite"),
]


@needs_c
@rejection_cases(FWD_BAD, "fwd")
def test_launcher_forward_rejects(name, mutate, message):
    assert_launcher_rejects(_ext._C.triplane_decode_fwd, _fwd_args(), mutate, message)


BWD_BAD = [
    ("dv", lambda a: a.update(dv=_arg((2, 60, 16), torch.bfloat16)), "dv must be float16"),
    ("dy", lambda a: a.update(dy=None), "dy is required"),
    ("a1", lambda a: a.update(a1=_arg((60, 2))), "a1 must have shape"),
    ("d_xy", lambda a: a.update(d_xy=_arg((2, 4, 5, 16), torch.float16)), "d_xy must be float32"),
    ("d_yt", lambda a: a.update(d_yt=_arg((2, 3, 5, 16), strides=[240, 80, 1, 5])), "d_yt must be contiguous"),
    ("dgamma_part", lambda a: a.update(dgamma_part=_arg((16,))), "dgamma_part must have shape"),
    ("p_xy", lambda a: a.update(p_xy=_arg((2, 4, 5, 2000), torch.float16)), "at most 1024 channels"),
]


@needs_c
@rejection_cases(BWD_BAD, "bwd")
def test_launcher_backward_rejects(name, mutate, message):
    assert_launcher_rejects(_ext._C.triplane_decode_bwd, _bwd_args(), mutate, message)


@needs_c
def test_launcher_rejects_extras_without_norm():
    assert_launcher_rejects(_ext._C.triplane_decode_fwd, _fwd_args(norm=False),
                            lambda a: a.update(mean=_arg((2, 60))), "mean must be None")
    assert_launcher_rejects(_ext._C.triplane_decode_bwd, _bwd_args(norm=False),
                            lambda a: a.update(dy=_arg((2, 60, 16), torch.float16)), "dy must be None")


@needs_c
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("norm", [False, True])
def test_launcher_valid_call_without_gpu_is_runtime_error(norm):
    assert_launchers_need_gpu("triplane_decode", _ext._C.triplane_decode_fwd, _fwd_args(norm=norm),
                              _ext._C.triplane_decode_bwd, _bwd_args(norm=norm))


# ---- GPU: CUDA and Triton on CUDA tensors, every dtype (skipped without a device)

GPU_CASES = CASES + [(2, 4, 8, 8, 64, 4), (1, 16, 32, 32, 384, 4)]


@pytest.mark.gpu
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_backends(case, backend, dtype, norm):
    b, t, h, w, c, e = case
    inputs = _inputs(b, t, h, w, c, e, dtype, device="cuda")
    got = _run(triplane_decode, backend, (t, h, w), *inputs, norm)
    same = lambda: _run(triplane_decode, "reference", (t, h, w), *inputs, norm)  # noqa: E731 (see BASELINE)
    assert_backend_matches(got, same, _truth((t, h, w), *[x.cpu() for x in inputs], norm), dtype, backend)


@pytest.mark.gpu
def test_gpu_unaligned_storage_uses_scalar_path():
    # Planes that start 2 bytes past an aligned address cannot take 16-byte loads.
    b, t, h, w, c = 1, 3, 5, 7, 64
    buf = torch.randn(1 + b * h * w * c, device="cuda", dtype=torch.float16)
    p_xy = buf[1:].view(b, h, w, c)
    p_yt, p_xt = torch.randn(b, t, w, c, device="cuda", dtype=torch.float16), torch.randn(b, t, h, c, device="cuda",
                                                                                        dtype=torch.float16)
    with use_backend("cuda"):
        v = triplane_sum(p_xy, p_yt, p_xt)
    expected = (p_xy.float()[:, None] + p_yt.float()[:, :, None] + p_xt.float()[:, :, :, None]).flatten(1, 3)
    torch.testing.assert_close(v.float(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
def test_gpu_graph_capture():
    b, t, h, w, c, e = 2, 4, 8, 8, 64, 4
    latent, ws, bs, gamma, beta, _, _ = _inputs(b, t, h, w, c, e, torch.bfloat16, device="cuda")
    for backend in ("cuda", "triton"):
        with use_backend(backend):
            fn = lambda: triplane_decode(latent, (t, h, w), ws, bs, norm_weight=gamma, norm_bias=beta)[1]  # noqa: E731
            expected = fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn()
            latent.mul_(0.5)
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out, fn())
            assert not torch.equal(out, expected)
            latent.mul_(2.0)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("norm", [False, True])
def test_triton_backward_in_blocks_of_rows_and_tokens(monkeypatch, norm, wide):
    # At large grids the axis-sum kernel walks the rows in blocks (dP_yt then adds up in its output) and the
    # LayerNorm row pass walks several token blocks a program; the test shapes are too small for either,
    # so force both: 2-row tiles over h = 7 (the last block partly past h), 4 token blocks a program.
    from pvdm_fast.ops import _launch
    from pvdm_fast.ops.triton import triplane_decode as tri

    b, t, h, w, c, e = CASES[0]
    monkeypatch.setattr(tri, "SUMS_TILE", 2 * 4 * 4)
    if wide:  # the 64-bit offsets of batch items over 2**31 values
        monkeypatch.setattr(tri, "WIDE_VALUES", 1)
    assert tri._sums_blocks(h, w, c, 4) == (2, 4, 4)
    calls = []

    def four_each(blocks, **_):
        calls.append(blocks)
        return 4, -(-blocks // 4)

    monkeypatch.setattr(_launch, "blocks_per_program", four_each)
    sums = _RecordingKernel(tri._sums_kernel)
    monkeypatch.setattr(tri, "_sums_kernel", sums)
    inputs = _inputs(b, t, h, w, c, e, torch.float32)
    got = _run(triplane_decode, "triton", (t, h, w), *inputs, norm)
    assert_fp32_matches(got, _truth((t, h, w), *inputs, norm), "triton")
    # the launch itself walked h = 7 in 4 blocks of 2 rows (not just the block rule above)
    assert [(o["BLOCK_Y"], o["HAS_NORM"], o["WIDE"]) for o in sums.launches] == [(2, norm, wide)]
    if norm:
        assert calls and calls[0] > 4


@pytest.mark.parametrize("norm", [False, True])
def test_triton_fp16_backward_in_blocks_of_rows(monkeypatch, norm):
    # The GPU test's fp16/bf16 base shape is where the axis-sum kernel walks rows in blocks (16-byte slices of
    # 8 channels); forced here as above: 2-row tiles over h = 7 at fp16's channel slice.
    from pvdm_fast.ops.triton import triplane_decode as tri

    b, t, h, w, c, e = CASES[0]
    monkeypatch.setattr(tri, "SUMS_TILE", 2 * 4 * 8)
    sums = _RecordingKernel(tri._sums_kernel)
    monkeypatch.setattr(tri, "_sums_kernel", sums)
    inputs = _inputs(b, t, h, w, c, e, torch.float16)
    got = _run(triplane_decode, "triton", (t, h, w), *inputs, norm)
    assert [(o["BLOCK_Y"], o["BLOCK_X"], o["BLOCK_CC"], o["HAS_NORM"]) for o in sums.launches] == [(2, 4, 8, norm)]
    torch_fp16 = _run(triplane_decode, "reference", (t, h, w), *inputs, norm)  # see BASELINE
    assert_low_within_2x(got, torch_fp16, _truth((t, h, w), *inputs, norm), torch.float16, "triton fp16 row blocks")


class _RecordingKernel:
    """A Triton kernel that records the keyword options (constexprs) of each `kernel[grid](...)` launch."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **options):
            self.launches.append(options)
            return self.kernel[grid](*args, **options)
        return launch


# ---- the CUDA kernels in the CPU emulation (python_tests/cuda_emu): the GPU test's cases and dtypes,
# plus the largest and smallest channel counts, run here on CPU tensors

EMULATED_CASES = CASES + [(2, 4, 8, 8, 64, 4), (1, 2, 3, 5, 1024, 4), (2, 3, 4, 5, 1, 4)]


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", EMULATED_CASES)
def test_emulated_cuda_kernels(emulated_cuda, case, dtype, norm):
    b, t, h, w, c, e = case
    inputs = _inputs(b, t, h, w, c, e, dtype)
    if c == 1:
        # One channel: each bias (and LayerNorm bias) gradient is a single sum of dV (dY) over every
        # token, near 0 now and then for zero-mean dV, where a relative fp32 check is ill-conditioned
        # (the reference backend failed it in 12 of 3000 runs). Gradients with a mean keep it sound.
        inputs = (*inputs[:5], inputs[5] + 1, inputs[6] + 1)
    got = _run(triplane_decode, "cuda", (t, h, w), *inputs, norm)
    assert emulated_cuda.calls == {"triplane_decode_fwd": 1, "triplane_decode_bwd": 1}
    same = lambda: _run(triplane_decode, "reference", (t, h, w), *inputs, norm)  # noqa: E731
    assert_backend_matches(got, same, _truth((t, h, w), *inputs, norm), dtype, "cuda (emulated)")


def test_emulated_cuda_unaligned_storage_uses_scalar_path(emulated_cuda):
    b, t, h, w, c = 1, 3, 5, 7, 64
    buf = torch.randn(1 + b * h * w * c, dtype=torch.float16)
    p_xy = buf[1:].view(b, h, w, c)  # 2 bytes past an aligned address: no 16-byte loads
    p_yt, p_xt = torch.randn(b, t, w, c, dtype=torch.float16), torch.randn(b, t, h, c, dtype=torch.float16)
    with use_backend("cuda"):
        v = triplane_sum(p_xy, p_yt, p_xt)
    assert emulated_cuda.calls == {"triplane_decode_fwd": 1}
    expected = (p_xy.double()[:, None] + p_yt.double()[:, :, None] + p_xt.double()[:, :, :, None]).flatten(1, 3)
    torch.testing.assert_close(v.double(), expected, rtol=1e-3, atol=2e-3)


# The axis-sum backward keeps T*(h+w) rows of 16-byte accumulators in dynamic shared memory; CUDA's
# default 48 KB per block covers static and dynamic shared memory together, so past it (or at it, with the
# LayerNorm variant's 128 B of static scratch) the launcher must raise the kernel's limit first.
# The boundary cases come first: a kernel's opt-in lasts for the process, so a larger case run before
# them would hide a launcher that forgets to opt in at the boundary.
SHARED_48KB_CASES = [
    (16, 48, 48, 8, torch.float16),   # 1536 rows: exactly 49152 B dynamic, + 128 B static with the norm
    (24, 32, 32, 8, torch.bfloat16),  # the same bytes at another shape and dtype
    (16, 96, 96, 4, torch.float32),   # 3072 rows of float32 x4: 49152 B
    (26, 30, 30, 8, torch.float16),   # 1560 rows: 49920 B of dynamic shared memory alone
]


def _backward_over_48kb(device, t, h, w, c, dtype, norm):
    from pvdm_fast.ops.triplane_decode import _BACKWARD, _FORWARD
    b = 1
    g = torch.Generator().manual_seed(0)
    p_xy, p_yt, p_xt = (torch.randn(s, generator=g).to(dtype) for s in [(b, h, w, c), (b, t, w, c), (b, t, h, c)])
    gamma, beta = (torch.randn(c, generator=g), torch.randn(c, generator=g)) if norm else (None, None)
    up = lambda x: None if x is None else x.double()  # noqa: E731
    on = lambda x: None if x is None else x.to(device)  # noqa: E731
    _, _, mean, rstd = _FORWARD["reference"](up(p_xy), up(p_yt), up(p_xt), up(gamma), up(beta), 1e-5)
    dv = torch.randn(b, t * h * w, c, generator=g).to(dtype)
    dy = torch.randn(b, t * h * w, c, generator=g).to(dtype) if norm else None
    stats = (mean.float(), rstd.float()) if norm else (None, None)
    got = _BACKWARD["cuda"](*map(on, (dv, dy, p_xy, p_yt, p_xt, gamma, *stats)))
    truth = _BACKWARD["reference"](up(dv), up(dy), up(p_xy), up(p_yt), up(p_xt), up(gamma), *(
        (mean, rstd) if norm else (None, None)))
    rows = t * (h + w) * (16 // torch.empty((), dtype=dtype).element_size()) * 4
    for name, got_g, r in zip(["d_xy", "d_yt", "d_xt", "dgamma", "dbeta"], got, truth):
        if r is not None:
            assert_fp32_close(got_g.cpu(), r, f"cuda on {device}, {rows} B of shared memory: {name}")


@pytest.mark.parametrize("case", [SHARED_48KB_CASES[0], SHARED_48KB_CASES[-1]], ids=str)
@pytest.mark.parametrize("norm", [False, True])
def test_emulated_cuda_backward_over_48kb_of_shared_memory(emulated_cuda, case, norm):
    _backward_over_48kb("cpu", *case, norm)
    assert emulated_cuda.calls == {"triplane_decode_bwd": 1}


@pytest.mark.gpu
@pytest.mark.parametrize("case", SHARED_48KB_CASES, ids=str)
@pytest.mark.parametrize("norm", [False, True])
def test_gpu_backward_over_48kb_of_shared_memory(case, norm):
    _backward_over_48kb("cuda", *case, norm)


def test_opcheck_emulated_cuda(emulated_cuda):
    test_opcheck("cuda")  # the CUDA kernels in the CPU emulation (python_tests/cuda_emu)
    assert emulated_cuda.calls["triplane_decode_fwd"] > 0 and emulated_cuda.calls["triplane_decode_bwd"] > 0


def test_emulated_cuda_kernels_at_the_base_shape(emulated_cuda):
    # The benchmark's configuration (T 16, 32 x 32, C 384, bf16, the decoder's LayerNorm fused) at batch 1:
    # 48 axis-sum blocks of 8 channels with 32 KB of shared memory each, 2048 row blocks.
    test_emulated_cuda_kernels(emulated_cuda, (1, 16, 32, 32, 384, 4), torch.bfloat16, True)
