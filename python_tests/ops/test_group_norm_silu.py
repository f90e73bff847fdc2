"""group_norm_silu: every backend against the float64 truth, gradients, opcheck, gradcheck, compile."""

import pytest
import torch

from pvdm_fast.ops import dispatch, group_norm_silu, use_backend
from pvdm_fast.ops.group_norm_silu import group_norm_silu_reference
from tolerances import assert_close_2x, assert_fp32_close

# (B, C, segments, groups, with_scale, with_shift, apply_silu), each chosen to stress something:
CASES = [
    (1, 32, [35, 27, 11], 8, True, True, True),     # batch 1; odd plane lengths, three planes
    (2, 40, [64], 8, True, False, True),            # single segment = plain GroupNorm; C not a multiple of 64
    (3, 96, [16, 8, 8], 32, False, True, True),     # 32 groups of 3 channels; yt/xt planes of equal size
    (2, 24, [5, 130, 1], 4, False, False, False),   # length-1 segment, segment longer than one tile; no SiLU
    (1, 18, [7, 3, 2, 9, 4, 1, 6, 2], 6, True, True, True),  # the maximum of 8 segments
]
CPU_BACKENDS = ["reference", "triton"]


def _inputs(b, c, segs, with_scale, with_shift, dtype, device="cpu", offset=0.0):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(device=device, dtype=dtype)
    x = rnd(b, c, sum(segs), s=2.0) + offset
    w, bias = 1 + rnd(c, s=0.5), rnd(c, s=0.5)
    scale = rnd(b, c, s=0.3) if with_scale else None
    shift = rnd(b, c, s=0.5) if with_shift else None
    dy = rnd(b, c, sum(segs))
    return x, w, bias, scale, shift, dy


def _misaligned(t):
    """A contiguous copy of t whose data starts one element past the allocation (not 16-byte aligned)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view_as(t)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


def _run(backend, x, w, bias, scale, shift, dy, segs, groups, silu, misalign=False):
    """Output and gradients (x, w, bias, scale, shift) through the public op; `misalign`: x and dy
    start one element past a 16-byte boundary."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, bias, scale, shift)]
    if misalign:
        leaves[0], dy = _misaligned(x).requires_grad_(), _misaligned(dy)
    with use_backend(backend):
        y = group_norm_silu(leaves[0], leaves[1], leaves[2], scale=leaves[3], shift=leaves[4], segments=segs,
                            num_groups=groups, apply_silu=silu)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + [t.grad for t in leaves if t is not None]


def _truth(x, w, bias, scale, shift, dy, segs, groups, silu):
    """float64 autograd through the reference forward (independent of the closed-form backward)."""
    up = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, bias, scale, shift)]
    y, _, _ = group_norm_silu_reference(*up, segments=segs, num_groups=groups, apply_silu=silu)
    y.backward(dy.double())
    return [y.detach()] + [t.grad for t in up if t is not None]


NAMES = ["y", "dx", "dweight", "dbias", "dscale/dshift", "dshift"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_float64_truth(backend, case):
    b, c, segs, groups, ws, wsh, silu = case
    inputs = _inputs(b, c, segs, ws, wsh, torch.float32, offset=3.0)  # offset: mean >> std stresses variance
    got = _run(backend, *inputs, segs, groups, silu)
    truth = _truth(*inputs, segs, groups, silu)
    for name, out, t in zip(NAMES, got, truth):
        assert out.dtype == torch.float32
        assert_fp32_close(out, t, f"{backend} {name}")


@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("case", CASES[:4])
def test_fp16_within_twice_torch_error(backend, case):
    b, c, segs, groups, ws, wsh, silu = case
    inputs = _inputs(b, c, segs, ws, wsh, torch.float16)
    got = _run(backend, *inputs, segs, groups, silu)
    same_dtype = _run("reference", *inputs, segs, groups, silu)
    truth = _truth(*inputs, segs, groups, silu)
    for name, out, ref, t in zip(NAMES, got, same_dtype, truth):
        assert out.dtype == torch.float16
        assert_close_2x(out, ref, t, f"{backend} fp16 {name}")


def test_statistics_are_per_segment():
    # Each plane normalised alone equals the packed call: the defining property of segments.
    x, w, bias, scale, shift, _ = _inputs(2, 16, [12, 6, 6], True, True, torch.float64)
    packed = group_norm_silu(x, w, bias, scale=scale, shift=shift, segments=[12, 6, 6], num_groups=4)
    alone = [group_norm_silu(p, w, bias, scale=scale, shift=shift, num_groups=4) for p in x.split([12, 6, 6], 2)]
    torch.testing.assert_close(packed, torch.cat(alone, 2), rtol=1e-12, atol=1e-12)


def test_matches_torch_group_norm_for_one_segment():
    x, w, bias, _, _, _ = _inputs(3, 24, [50], False, False, torch.float64)
    ours = group_norm_silu(x, w, bias, num_groups=6, apply_silu=False)
    torch.testing.assert_close(ours, torch.nn.functional.group_norm(x, 6, w, bias, 1e-5), rtol=1e-10, atol=1e-10)


def test_accepts_non_contiguous_and_spatial_inputs():
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64).transpose(2, 3)  # (B, C, 7, 5), non-contiguous
    w, bias = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    for backend in CPU_BACKENDS:
        with use_backend(backend):
            y = group_norm_silu(x if backend == "reference" else x.float(), w, bias, num_groups=4)
        assert y.shape == x.shape
        expected = torch.nn.functional.silu(torch.nn.functional.group_norm(x, 4, w, bias))
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_gradcheck_reference_float64():
    x, w, bias, scale, shift, _ = _inputs(2, 6, [4, 3, 2], True, True, torch.float64)
    args = [t.requires_grad_() for t in (x, w, bias, scale, shift)]
    fn = lambda x, w, b, sc, sh: group_norm_silu(x, w, b, scale=sc, shift=sh, segments=[4, 3, 2], num_groups=3)
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    x, w, bias, scale, shift, dy = _inputs(2, 8, [5, 3, 3], True, True, torch.float32)
    args = (x.requires_grad_(), w.requires_grad_(), bias, scale, shift, [5, 3, 3], 4, 1e-5, True, backend)
    torch.library.opcheck(torch.ops.pvdm.group_norm_silu.default, args)
    with use_backend(backend):
        y = group_norm_silu(x, w, bias, scale=scale, shift=shift, segments=[5, 3, 3], num_groups=4)
    _, mean, rstd = torch.ops.pvdm.group_norm_silu(*[a.detach() if torch.is_tensor(a) else a for a in args])
    bwd_args = (dy, x.detach(), w.detach(), bias, scale, shift, mean, rstd, [5, 3, 3], 4, True, backend)
    torch.library.opcheck(torch.ops.pvdm.group_norm_silu_backward.default, bwd_args)
    assert y.shape == x.shape


class _Block(torch.nn.Module):
    """A UNet-like residual block over a packed triplane, to check the op inside torch.compile."""

    def __init__(self, c=16, segs=(9, 6, 6)):
        super().__init__()
        self.segs = list(segs)
        self.norm_w, self.norm_b = torch.nn.Parameter(torch.ones(c)), torch.nn.Parameter(torch.zeros(c))
        self.proj = torch.nn.Conv1d(c, c, 1)
        self.film = torch.nn.Linear(8, 2 * c)

    def forward(self, x, emb):
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = group_norm_silu(x, self.norm_w, self.norm_b, scale=scale, shift=shift, segments=self.segs, num_groups=4)
        return x + self.proj(h)


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    block = _Block()
    x, emb = torch.randn(2, 16, 21, requires_grad=True), torch.randn(2, 8)
    eager = block(x, emb)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, emb)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, block.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_value_error():
    x, w, bias = torch.randn(2, 12, 10), torch.randn(12), torch.randn(12)
    with pytest.raises(ValueError, match="multiple of num_groups"):
        group_norm_silu(x, w, bias, num_groups=5)
    with pytest.raises(ValueError, match="sum to the length"):
        group_norm_silu(x, w, bias, segments=[4, 4], num_groups=4)
    with pytest.raises(ValueError, match="scale must have shape"):
        group_norm_silu(x, w, bias, scale=torch.randn(12), num_groups=4)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        group_norm_silu(torch.randn(12, 10), w, bias, num_groups=4)


def test_dispatch_rules_on_cpu():
    x = torch.randn(1, 4, 4)
    assert dispatch.select(dispatch.REGISTRY["group_norm_silu"], x) == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("fast"):
            pass
    with use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        group_norm_silu(x, torch.ones(4), torch.zeros(4), num_groups=2)
    with use_backend("triton"), pytest.raises(RuntimeError, match="supports float32, float16, bfloat16"):
        group_norm_silu(x.double(), torch.ones(4), torch.zeros(4), num_groups=2)
    assert dispatch.forced_backend() is None  # the context managers restored auto


# ---- GPU: every backend and dtype on CUDA tensors (skipped without a device)

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("case", CASES + [(4, 256, [1024, 512, 512], 32, True, True, True),
                                          (4, 1024, [16, 8, 8], 32, True, True, True)])
def test_gpu_backends(backend, dtype, case):
    _check_backend(backend, dtype, case, "cuda")


# The CUDA kernels walk each region's channel rows (gn_rows / gn_row_walk in kernels/group_norm_silu.cuh)
# in 16-byte items when every segment length is a multiple of 16 bytes' elements, else element by element:
ROW_WALK_CASES = [
    (2, 64, [64, 32, 32], 32, True, True, True),    # 16-byte path, UNet-like layout
    (2, 16, [13, 6, 10], 2, True, True, True),      # 8 channels per group, rows not a multiple of 4 or 8: scalar path
    (1, 16, [296, 40], 2, True, False, True),       # 16-byte path, 37 (fp16) / 74 (fp32) items: unrolled loop + tail
    (2, 32, [1], 4, True, True, True),              # a single position (8 per group: with 2, dx is ~0 by cancellation)
    (1, 512, [24, 8], 2, False, True, True),        # 256 channels per group: more rows than row groups per block
    (2, 4, [1201], 4, True, True, False),           # one channel per group: all 256 threads on one row, scalar
]


# The CUDA kernels in the CPU emulation (python_tests/cuda_emu), on CPU tensors: the GPU test's checks.
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("case", CASES + ROW_WALK_CASES)
def test_emulated_cuda_kernels(emulated_cuda, dtype, case):
    _check_backend("cuda", dtype, case, "cpu")
    assert emulated_cuda.calls == {"gn_silu_fwd": 1, "gn_silu_bwd": 1}


@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_emulated_cuda_kernels_unaligned_rows(emulated_cuda, dtype):
    # 16-byte-multiple segments, but x and dy one element past a 16-byte boundary: the scalar path.
    _check_backend("cuda", dtype, ROW_WALK_CASES[0], "cpu", misalign=True)
    assert emulated_cuda.calls == {"gn_silu_fwd": 1, "gn_silu_bwd": 1}


def _check_backend(backend, dtype, case, device, misalign=False):
    b, c, segs, groups, ws, wsh, silu = case
    inputs = _inputs(b, c, segs, ws, wsh, dtype, device=device, offset=1.0)
    got = _run(backend, *inputs, segs, groups, silu, misalign=misalign)
    truth = _truth(*[t.cpu() if t is not None else None for t in inputs], segs, groups, silu)
    if dtype == torch.float32:
        for name, out, t in zip(NAMES, got, truth):
            assert_fp32_close(out.cpu(), t, f"{backend} {name}")
        return
    same_dtype = _run("reference", *inputs, segs, groups, silu)
    for name, out, ref, t in zip(NAMES, got, same_dtype, truth):
        assert out.dtype == dtype
        assert_close_2x(out.cpu(), ref.cpu(), t, f"{backend} {dtype} {name}")


@pytest.mark.gpu
def test_gpu_auto_picks_cuda_and_graph_capture():
    x, w, bias, scale, shift, _ = _inputs(2, 64, [64, 32, 32], True, True, torch.bfloat16, device="cuda")
    assert dispatch.select(dispatch.REGISTRY["group_norm_silu"], x) == "cuda"
    for backend in ("cuda", "triton"):
        with use_backend(backend):
            fn = lambda: group_norm_silu(x, w, bias, scale=scale, shift=shift, segments=[64, 32, 32], num_groups=32)
            expected = fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn()
            x.add_(0.5)
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out, fn())  # the replay saw the new x
            assert not torch.equal(out, expected)
            x.sub_(0.5)


def test_opcheck_emulated_cuda(emulated_cuda):
    test_opcheck("cuda")  # the CUDA kernels in the CPU emulation (python_tests/cuda_emu)
    assert emulated_cuda.calls["gn_silu_fwd"] > 0 and emulated_cuda.calls["gn_silu_bwd"] > 0
