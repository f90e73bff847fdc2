"""axis_gather: every backend and axis against the float64 truth (the spec's permute + append + pos + LayerNorm),
gradients of x, token, pos and the LayerNorm, opcheck, compile, and the CUDA launcher's validation."""

import pytest
import torch

from pvdm_fast.ops import _ext, axis_gather, axis_gather_unfused, use_backend
from pvdm_fast.ops.axis_gather import axis_geometry

from ._launcher_cases import (assert_backend_matches, assert_compile_matches_eager, assert_fp32_matches,
                              assert_launcher_rejects, assert_launchers_need_gpu, assert_low_within_2x, needs_c,
                              rejection_cases)
from ._launcher_cases import tensor_arg as _arg

GRID = (5, 7, 3)  # odd T, h, w
AXES = ["xy", "yt", "xt"]
CPU_BACKENDS = ["reference", "triton"]


def _inputs(b, grid, c, axis, dtype, device="cpu"):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(device=device, dtype=dtype)

    t, h, w = grid
    a = axis_geometry(grid, AXES.index(axis))[0]
    x = rnd(b, t * h * w, c) + 0.5
    token, pos = rnd(1, 1, c), rnd(1, a + 1, c, s=0.5)
    gamma, beta = 1 + rnd(c, s=0.3), rnd(c, s=0.3)
    lines = b * t * h * w // a
    ds, dy = rnd(lines, a + 1, c), rnd(lines, a + 1, c)
    return x, token, pos, gamma, beta, ds, dy


def _run(fn, backend, axis, x, token, pos, gamma, beta, ds, dy, norm, grid=GRID):
    leaves = [v.clone().requires_grad_() for v in (x, token, pos, gamma, beta)]
    with use_backend(backend):
        if norm:
            s, y = fn(leaves[0], grid, axis, leaves[1], leaves[2], norm_weight=leaves[3], norm_bias=leaves[4])
            (s * ds.to(s.dtype)).sum().add((y * dy.to(y.dtype)).sum()).backward()
            outs = [s, y]
        else:
            s = fn(leaves[0], grid, axis, leaves[1], leaves[2])
            s.backward(ds.to(s.dtype))
            outs = [s]
    return [o.detach() for o in outs] + [v.grad for v in (leaves if norm else leaves[:3])]


def _truth(axis, *inputs, norm, grid=GRID):
    up = [v.double().cpu() for v in inputs]
    return _run(axis_gather_unfused, "reference", axis, *up, norm, grid=grid)


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("axis", AXES)
def test_fp32_matches_float64_truth(axis, backend, norm):
    inputs = _inputs(2, GRID, 37, axis, torch.float32)
    got = _run(axis_gather, backend, axis, *inputs, norm)
    assert_fp32_matches(got, _truth(axis, *inputs, norm=norm), f"{backend} {axis}")


@pytest.mark.parametrize("axis", AXES)
def test_fp16_triton_within_twice_torch_error(axis):
    inputs = _inputs(2, GRID, 37, axis, torch.float16)
    got = _run(axis_gather, "triton", axis, *inputs, True)
    same = _run(axis_gather, "reference", axis, *inputs, True)
    assert_low_within_2x(got, same, _truth(axis, *inputs, norm=True), torch.float16, f"triton fp16 {axis}")


def test_sequence_layout_and_appended_token_at_the_end():
    # x encodes its own (t, y, x) coordinates; check where every line reads from.
    t, h, w = GRID
    coords = torch.arange(t * h * w, dtype=torch.float64).reshape(1, t * h * w, 1)
    token = torch.full((1, 1, 1), -1.0, dtype=torch.float64)
    for axis, a in (("xy", t), ("yt", h), ("xt", w)):
        pos = torch.zeros(1, a + 1, 1, dtype=torch.float64)
        for backend in CPU_BACKENDS:
            dt = torch.float64 if backend == "reference" else torch.float32
            with use_backend(backend):
                s = axis_gather(coords.to(dt), GRID, axis, token.to(dt), pos.to(dt))[..., 0]
            assert (s[:, -1] == -1).all()
            for m in range(s.shape[0]):
                o1, o2 = divmod(m, (w if axis in ("xy", "yt") else h))
                for j in range(a):
                    ti, y, x = {"xy": (j, o1, o2), "yt": (o1, j, o2), "xt": (o1, o2, j)}[axis]
                    assert s[m, j].item() == (ti * h + y) * w + x, (backend, axis, m, j)


def test_gradcheck_reference_float64():
    x, token, pos, gamma, beta, _, _ = _inputs(1, (2, 3, 2), 5, "yt", torch.float64)
    args = [v.requires_grad_() for v in (x, token, pos, gamma, beta)]
    fn = lambda x, tk, p, g, b: axis_gather(x, (2, 3, 2), "yt", tk, p, norm_weight=g, norm_bias=b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    grid, c = [3, 2, 3], 12
    for axis in range(3):
        a = axis_geometry(grid, axis)[0]
        x, token, pos = torch.randn(2, 18, c), torch.randn(c), torch.randn(a + 1, c)
        gamma, beta = torch.randn(c), torch.randn(c)
        for norm in (False, True):
            args = (x.requires_grad_(), token, pos.requires_grad_(), gamma if norm else None, beta if norm else None,
                    grid, axis, 1e-5, backend)
            torch.library.opcheck(torch.ops.pvdm.axis_gather.default, args)
            s, _, mean, rstd = torch.ops.pvdm.axis_gather(*[v.detach() if torch.is_tensor(v) else v for v in args])
            bwd = (torch.randn_like(s), torch.randn_like(s) if norm else None, x.detach(), token, pos.detach(),
                   gamma if norm else None, mean, rstd, grid, axis, backend)
            torch.library.opcheck(torch.ops.pvdm.axis_gather_backward.default, bwd)


class _Projection(torch.nn.Module):
    """The first step of an axis projection: gather + LayerNorm, one residual update, plane at position 0."""

    def __init__(self, c=12, grid=(3, 2, 3)):
        super().__init__()
        self.grid = grid
        self.token = torch.nn.Parameter(torch.randn(1, 1, c))
        self.pos = torch.nn.Parameter(torch.randn(1, grid[2] + 1, c))
        self.norm = torch.nn.LayerNorm(c)
        self.proj = torch.nn.Linear(c, c)

    def forward(self, x):
        s, y = axis_gather(x, self.grid, "xt", self.token, self.pos, norm_weight=self.norm.weight,
                           norm_bias=self.norm.bias)
        return (s + self.proj(y))[:, 0]


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = _Projection()
    assert_compile_matches_eager(model, torch.randn(2, 18, 12, requires_grad=True))


def test_bad_inputs_raise_value_error():
    x, tok, pos = torch.randn(1, 30, 8), torch.randn(8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="axis must be one of"):
        axis_gather(x, (5, 2, 3), "tx", tok, pos)
    with pytest.raises(ValueError, match=r"x must be \(B, T\*h\*w, C\)"):
        axis_gather(x, (5, 2, 4), "xy", tok, pos)
    with pytest.raises(ValueError, match="pos must hold"):
        axis_gather(x, (5, 2, 3), "yt", tok, pos)
    with pytest.raises(ValueError, match="token must hold"):
        axis_gather(x, (5, 2, 3), "xy", torch.randn(7), pos)
    with pytest.raises(ValueError, match="both norm_weight and norm_bias"):
        axis_gather(x, (5, 2, 3), "xy", tok, pos, norm_weight=torch.ones(8))


# ---- the raw CUDA launchers: validation runs before any CUDA call, so these run without a GPU

# grid (3, 4, 5), axis 1 (yt): A = 4, lines = B*T*w = 2*3*5 = 30
B, N, C, A, M = 2, 60, 16, 4, 30


def _fwd_args(norm=True, dtype=torch.bfloat16):
    f = lambda *s: _arg(s) if norm else None  # noqa: E731
    return dict(x=_arg((B, N, C), dtype), token=_arg((C,)), pos=_arg((A + 1, C)), gamma=f(C), beta=f(C),
                s=_arg((M, A + 1, C), dtype), y=_arg((M, A + 1, C), dtype) if norm else None, mean=f(M, A + 1),
                rstd=f(M, A + 1), grid=[3, 4, 5], axis=1, lines_per_block=8, eps=1e-5, stream=0)


def _bwd_args(norm=True, dtype=torch.bfloat16):
    f = lambda *s: _arg(s) if norm else None  # noqa: E731
    nb = -(-M // 8)
    return dict(ds=_arg((M, A + 1, C), dtype), dy=_arg((M, A + 1, C), dtype) if norm else None, x=_arg((B, N, C), dtype),
                token=_arg((C,)), pos=_arg((A + 1, C)), gamma=f(C), mean=f(M, A + 1), rstd=f(M, A + 1),
                dx=_arg((B, N, C), dtype), part_pos=_arg((nb, A + 1, C)), part_gamma=f(nb, A + 1, C),
                part_beta=f(nb, A + 1, C), grid=[3, 4, 5], axis=1, lines_per_block=8, stream=0)


FWD_BAD = [
    ("x", lambda a: a.update(x=_arg((B, N, C), torch.float64)), "x must be float32, float16 or bfloat16"),
    ("x", lambda a: a.update(x=_arg((B, N + 1, C), torch.bfloat16)), r"x must have shape \(2, 60, 16\)"),
    ("x", lambda a: a.update(x=_arg((B, N, C), torch.bfloat16, strides=[N * C, 1, N])), "x must be contiguous"),
    ("token", lambda a: a.update(token=_arg((C,), torch.float16)), "token must be float32"),
    ("pos", lambda a: a.update(pos=_arg((A, C))), r"pos must have shape \(5, 16\)"),
    ("gamma", lambda a: a.update(gamma=_arg((C + 1,))), "gamma must have shape"),
    ("beta", lambda a: a.update(beta=None), "both gamma and beta"),
    ("s", lambda a: a.update(s=_arg((M, A + 1, C), torch.float32)), "s must be bfloat16"),
    ("s", lambda a: a.update(s=_arg((M, A + 1, C), torch.bfloat16, ptr=0)), "s is a null pointer"),
    ("y", lambda a: a.update(y=_arg((M, A + 1, C), torch.bfloat16, strides=[1, M, M * (A + 1)])), "y must be contiguous"),
    ("mean", lambda a: a.update(mean=None), "mean is required"),
    ("grid", lambda a: a.update(grid=[3, 4]), "grid must be three positive sizes"),
    ("axis", lambda a: a.update(axis=3), "axis must be 0"),
    ("lines_per_block", lambda a: a.update(lines_per_block=0), "lines_per_block must be positive"),
    ("eps", lambda a: a.update(eps=float("nan")), "eps must be finite"),
]


@needs_c
@rejection_cases(FWD_BAD, "fwd")
def test_launcher_forward_rejects(name, mutate, message):
    assert_launcher_rejects(_ext._C.axis_gather_fwd, _fwd_args(), mutate, message)


BWD_BAD = [
    ("ds", lambda a: a.update(ds=_arg((M, A + 1, C), torch.float16)), "ds must be bfloat16"),
    ("dy", lambda a: a.update(dy=None), "dy is required"),
    ("dx", lambda a: a.update(dx=_arg((B, N, C - 1), torch.bfloat16)), "dx must have shape"),
    ("part_pos", lambda a: a.update(part_pos=_arg((3, A + 1, C))), r"part_pos must have shape \(4, 5, 16\)"),
    ("part_beta", lambda a: a.update(part_beta=_arg((4, A + 1, C), strides=[1, 4, 20])), "part_beta must be contiguous"),
    ("x", lambda a: a.update(x=_arg((B, N, 2048), torch.bfloat16)), "at most 1024 channels"),
]


@needs_c
@rejection_cases(BWD_BAD, "bwd")
def test_launcher_backward_rejects(name, mutate, message):
    assert_launcher_rejects(_ext._C.axis_gather_bwd, _bwd_args(), mutate, message)


@needs_c
def test_launcher_rejects_extras_without_norm():
    assert_launcher_rejects(_ext._C.axis_gather_fwd, _fwd_args(norm=False),
                            lambda a: a.update(y=_arg((M, A + 1, C), torch.bfloat16)), "y must be None")
    assert_launcher_rejects(_ext._C.axis_gather_bwd, _bwd_args(norm=False),
                            lambda a: a.update(part_gamma=_arg((4, A + 1, C))), "part_gamma must be None")


@needs_c
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("norm", [False, True])
def test_launcher_valid_call_without_gpu_is_runtime_error(norm):
    assert_launchers_need_gpu("axis_gather", _ext._C.axis_gather_fwd, _fwd_args(norm=norm), _ext._C.axis_gather_bwd,
                              _bwd_args(norm=norm))


# ---- GPU: CUDA and Triton on CUDA tensors, every dtype (skipped without a device)

@pytest.mark.gpu
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("grid,c", [(GRID, 37), ((16, 8, 8), 64), ((16, 32, 32), 384)])
def test_gpu_backends(grid, c, axis, backend, dtype, norm):
    _check_backend(backend, grid, c, axis, dtype, norm, "cuda")


# The CUDA kernels in the CPU emulation (python_tests/cuda_emu), on CPU tensors: the GPU test's checks, with
# 8 and 1024 channels (the 16-byte path's narrowest row, the widest row a warp holds) beside 37.
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("grid,c", [(GRID, 37), ((4, 3, 5), 8), ((2, 3, 2), 1024)])
def test_emulated_cuda_kernels(emulated_cuda, grid, c, axis, dtype, norm):
    _check_backend("cuda", grid, c, axis, dtype, norm, "cpu")
    assert emulated_cuda.calls == {"axis_gather_fwd": 1, "axis_gather_bwd": 1}


@pytest.mark.parametrize("axis", AXES)
def test_emulated_cuda_kernels_at_the_base_shape(emulated_cuda, axis):
    # The benchmark's grid (T 16, 32 x 32) and width (C 384) in bf16 with the fused LayerNorm.
    test_emulated_cuda_kernels(emulated_cuda, (16, 32, 32), 384, axis, torch.bfloat16, True)


def _check_backend(backend, grid, c, axis, dtype, norm, device):
    inputs = _inputs(2, grid, c, axis, dtype, device=device)
    got = _run(axis_gather, backend, axis, *inputs, norm, grid=grid)
    same = lambda: _run(axis_gather, "reference", axis, *inputs, norm, grid=grid)  # noqa: E731
    assert_backend_matches(got, same, _truth(axis, *inputs, norm=norm, grid=grid), dtype, f"{backend} {axis}")


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("axis", AXES)
def test_triton_backward_programs_walking_several_blocks(monkeypatch, axis, norm):
    # At the base shapes each backward program walks several blocks of lines (its partial sums stay small);
    # the test shapes are too small for that, so force two blocks a program, the last one partly past M.
    from pvdm_fast.ops import _launch

    calls = []

    def two_each(blocks, **_):
        calls.append(blocks)
        return 2, -(-blocks // 2)

    monkeypatch.setattr(_launch, "blocks_per_program", two_each)
    inputs = _inputs(2, GRID, 37, axis, torch.float32)
    got = _run(axis_gather, "triton", axis, *inputs, norm)
    assert calls and calls[0] >= 2
    assert_fp32_matches(got, _truth(axis, *inputs, norm=norm), "triton")


@pytest.mark.parametrize("lines,positions", [(4096, 17), (2048, 33), (42, 4), (10**6, 17), (64, 1025), (1, 2)])
def test_cuda_backward_lines_per_block(lines, positions):
    # Each CUDA backward block writes a row of partial sums per position: about 1024 blocks in all while
    # the lines allow, 8 to 256 lines each.
    from pvdm_fast.ops.axis_gather import _bwd_lines

    per = _bwd_lines(lines, positions)
    blocks = -(-lines // per) * positions
    assert 8 <= per <= 256
    assert blocks >= min(1024, lines // 8 * positions) // 2 or per == 8 or per == 256
    assert blocks <= max(2048, positions * 8) or per == 256


def test_opcheck_emulated_cuda(emulated_cuda):
    test_opcheck("cuda")  # the CUDA kernels in the CPU emulation (python_tests/cuda_emu)
    assert emulated_cuda.calls["axis_gather_fwd"] > 0 and emulated_cuda.calls["axis_gather_bwd"] > 0
