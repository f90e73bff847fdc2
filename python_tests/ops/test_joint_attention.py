"""joint_attention: both backends against float64 autograd of the legacy reference, both memory orders,
plane mixes, opcheck, compile, bad inputs. Interpreter cases stay at a handful of Triton programs."""

import pytest
import torch
import torch.nn.functional as F

from pvdm_fast.ops import dispatch, joint_attention, use_backend
from pvdm_fast.ops.joint_attention import joint_attention_reference
from tolerances import assert_close_2x, assert_fp32_close

from ._attention_launches import pick_gpu_tiles, record_launches

# (B, heads, head dim, L, token-major qkv)
CASES = [
    (1, 2, 32, 37, False),            # odd length, channels-first
    (2, 3, 48, 17, True),             # 3 heads of 48 (padded), token-major, short: packed lines
    (1, 1, 64, 65, False),            # tile + 1
    (2, 2, 128, 1, False),            # length 1, head dim 128
    (1, 1, 32, 5 * 4 + 3 * 4 + 3 * 5, True),  # a triplane's h*w + T*w + T*h tokens
]
IDS = [f"b{c[0]}-h{c[1]}d{c[2]}-L{c[3]}{'-tokmajor' if c[4] else ''}" for c in CASES]


def _inputs(case, dtype, device="cpu"):
    b, heads, d, length, token_major = case
    g = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if token_major:
        return rnd(b, length, 3 * heads * d).transpose(1, 2), rnd(b, heads * d, length)
    return rnd(b, 3 * heads * d, length), rnd(b, heads * d, length)


def _leaf(qkv, dtype=None):
    """A leaf copy that keeps qkv's memory order."""
    x = torch.empty_like(qkv, dtype=dtype or qkv.dtype).copy_(qkv)
    return x.requires_grad_()


def _run(backend, case, qkv, dout):
    x = _leaf(qkv)
    with use_backend(backend):
        out = joint_attention(x, case[1])
    out.backward(dout.to(out.dtype))
    return [out.detach(), x.grad]


def _truth(case, qkv, dout, dtype=torch.float64):
    """Autograd through the legacy reference (float64: the truth; own dtype: PyTorch's error)."""
    x = _leaf(qkv, dtype)
    out, _ = joint_attention_reference(x, case[1])
    out.backward(dout.to(dtype))
    return [out.detach(), x.grad]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp32_matches_float64_truth(backend, case):
    qkv, dout = _inputs(case, torch.float32)
    got, truth = _run(backend, case, qkv, dout), _truth(case, qkv, dout)
    for name, out, t in zip(["out", "dqkv"], got, truth):
        assert out.dtype == torch.float32 and out.shape == t.shape
        assert_fp32_close(out, t, f"{backend} {name}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp16_within_twice_torch_error(case):
    qkv, dout = _inputs(case, torch.float16)
    got = _run("triton", case, qkv, dout)
    same_dtype, truth = _truth(case, qkv, dout, torch.float16), _truth(case, qkv, dout)
    for name, out, ref, t in zip(["out", "dqkv"], got, same_dtype, truth):
        assert out.dtype == torch.float16
        assert_close_2x(out, ref, t, f"triton fp16 {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", [CASES[2], (1, 2, 32, 70, True)], ids=[IDS[2], "b1-h2d32-L70-tokmajor"])
def test_gpu_tile_choice(monkeypatch, case, dtype):
    # On a GPU the forward runs 128-row q tiles (head dim <= 64), which the interpreter never picks; the
    # backward then takes delta = rowsum(dO * O) from that output over two 64-key blocks.
    pick_gpu_tiles(monkeypatch)
    launches = record_launches(monkeypatch)
    qkv, dout = _inputs(case, dtype)
    got = _run("triton", case, qkv, dout)
    assert [launch.kernel for launch in launches] == ["forward", "dq", "dkdv"]
    fwd, dq, dkdv = launches
    b, heads = case[:2]
    assert fwd.dtype == dtype and (fwd.G, fwd.BMP, fwd.programs) == (1, 128, b * heads)  # one tile a head
    assert dq.dtype == dtype and not dq.ONE_KB and not dq.F32                            # delta from O
    assert (dkdv.BNP, dkdv.programs) == (64, 2 * b * heads)                              # two key blocks
    truth = _truth(case, qkv, dout)
    same_dtype = _truth(case, qkv, dout, dtype) if dtype != torch.float32 else truth
    for name, out, ref, t in zip(["out", "dqkv"], got, same_dtype, truth):
        assert out.dtype == dtype and out.shape == t.shape
        if dtype == torch.float32:
            assert_fp32_close(out, t, f"triton GPU tiles {name}")
        else:
            assert_close_2x(out, ref, t, f"triton fp16 GPU tiles {name}")


def test_legacy_order_and_memory_order():
    # Independent formulation: per head [q, k, v] channel blocks, SDPA on token-major tensors.
    b, heads, d, length = 2, 3, 16, 11
    qkv = torch.randn(b, 3 * heads * d, length)
    q, k, v = qkv.view(b, heads, 3, d, length).transpose(-1, -2).unbind(2)
    want = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, heads * d, length)
    token_major = qkv.transpose(1, 2).contiguous().transpose(1, 2)
    with use_backend("triton"):
        first, second = joint_attention(qkv, heads), joint_attention(token_major, heads)
    torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-6)
    assert first.is_contiguous() and second.transpose(1, 2).is_contiguous()  # output follows qkv's order
    strided = torch.randn(b, 6 * heads * d, length)[:, ::2]                  # neither order: copied first
    with use_backend("triton"):
        torch.testing.assert_close(joint_attention(strided, heads), joint_attention_reference(strided, heads)[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("token_major", [False, True])
def test_opcheck(backend, token_major):
    case = (1, 2, 16, 9, token_major)
    qkv, dout = _inputs(case, torch.float32)
    torch.library.opcheck(torch.ops.pvdm.joint_attention.default, (qkv.requires_grad_(), 2, backend))
    out, lse = torch.ops.pvdm.joint_attention(qkv.detach(), 2, backend)
    dout = torch.empty_like(out).copy_(dout)
    torch.library.opcheck(torch.ops.pvdm.joint_attention_backward.default,
                          (dout, qkv.detach(), out, lse, 2, backend))


class _Block(torch.nn.Module):
    """The UNet attention block's shape: GroupNorm -> 1x1 conv to 3C -> attention -> 1x1 conv, residual."""

    def __init__(self, c=32, heads=2):
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.GroupNorm(8, c)
        self.qkv = torch.nn.Conv1d(c, 3 * c, 1)
        self.proj = torch.nn.Conv1d(c, c, 1)

    def forward(self, x):
        return x + self.proj(joint_attention(self.qkv(self.norm(x)), self.heads))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(2, 32, 13, requires_grad=True)
    with use_backend("triton"):
        eager = block(x)
        eager.square().sum().backward()
        grads = [p.grad.clone() for p in block.parameters()]
        block.zero_grad()
        out = torch.compile(block, fullgraph=True)(x)
        out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, block.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match=r"\(B, 3C, L\)"):
        joint_attention(torch.randn(12, 5), 2)
    with pytest.raises(ValueError, match="num_heads must divide"):
        joint_attention(torch.randn(1, 24, 5), 3)
    with pytest.raises(ValueError, match="float tensor"):
        joint_attention(torch.ones(1, 24, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="empty"):
        joint_attention(torch.randn(1, 24, 0), 2)
    with use_backend("triton"), pytest.raises(RuntimeError, match="supports float32, float16, bfloat16"):
        joint_attention(torch.randn(1, 24, 5, dtype=torch.float64), 2)
    assert dispatch.select(dispatch.REGISTRY["joint_attention"], torch.randn(1, 24, 5)) == "reference"


# ---- GPU: bf16 and UNet sizes (skipped without a device)

GPU_CASES = [
    (2, 8, 32, 2048, False),   # level 0: C 256, the 32x32 + 16x32 + 16x32 triplane
    (2, 8, 64, 512, True),     # level 1: C 512
    (2, 8, 128, 128, False),   # level 2: C 1024
    (1, 4, 64, 4096, True),    # the longest joint sequence
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", GPU_CASES + CASES)
def test_gpu_triton(dtype, case):
    qkv, dout = _inputs(case, dtype, device="cuda")
    got = _run("triton", case, qkv, dout)
    truth = _truth(case, qkv.cpu(), dout.cpu())
    if dtype == torch.float32:
        for name, out, t in zip(["out", "dqkv"], got, truth):
            assert_fp32_close(out.cpu(), t, f"triton {name}")
        return
    same_dtype = _truth(case, qkv, dout, dtype)
    for name, out, ref, t in zip(["out", "dqkv"], got, same_dtype, truth):
        assert_close_2x(out.cpu(), ref.cpu(), t, f"triton {dtype} {name}")
