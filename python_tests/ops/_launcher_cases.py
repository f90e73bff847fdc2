"""Test helpers shared by the fused row ops (triplane_decode, axis_gather): accuracy checks over an
op's outputs and gradients, the torch.compile check, and the raw `_C` launcher cases (argument
validation runs before any CUDA call, so those run without a GPU)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import pytest
import torch

from pvdm_fast.ops import _ext
from tolerances import assert_close_2x, assert_fp32_close

needs_c = pytest.mark.skipif(_ext._C is None, reason="pvdm_fast._C is not built")


def assert_fp32_matches(got: Sequence[torch.Tensor], truth: Sequence[torch.Tensor], label: str) -> None:
    """Every float32 output/gradient against the float64 truth (on the CPU)."""
    assert len(got) == len(truth)
    for i, (out, ref) in enumerate(zip(got, truth)):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert_fp32_close(out.cpu(), ref, f"{label} output/grad {i}")


def assert_low_within_2x(got: Sequence[torch.Tensor], same: Sequence[torch.Tensor], truth: Sequence[torch.Tensor],
                         dtype: torch.dtype, label: str) -> None:
    """Every low-precision output/gradient within twice the error of torch in the same dtype (`same`)."""
    assert len(got) == len(same) == len(truth)
    for i, (out, ref, tr) in enumerate(zip(got, same, truth)):
        assert out.dtype == dtype
        assert_close_2x(out.cpu(), ref.cpu(), tr, f"{label} output/grad {i}")


def assert_backend_matches(got: Sequence[torch.Tensor], same: Callable[[], Sequence[torch.Tensor]],
                           truth: Sequence[torch.Tensor], dtype: torch.dtype, label: str) -> None:
    """float32: against the truth; float16/bfloat16: within 2x of torch in that dtype (`same()`)."""
    if dtype == torch.float32:
        assert_fp32_matches(got, truth, label)
    else:
        assert_low_within_2x(got, same(), truth, dtype, f"{label} {dtype}")


def assert_compile_matches_eager(model: torch.nn.Module, inp: torch.Tensor) -> None:
    """fullgraph torch.compile of `model` gives eager's output and parameter gradients."""
    eager = model(inp)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = torch.compile(model, fullgraph=True)(inp)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def tensor_arg(shape: Sequence[int], dtype: torch.dtype = torch.float32, strides: Optional[Sequence[int]] = None,
               ptr: int = 4096) -> tuple:
    """A launcher tensor argument with a fake (never dereferenced) pointer; dtype code 7 for dtypes the
    launchers do not take."""
    if strides is None:
        strides = list(torch.empty(shape).stride())
    return (ptr, _ext.DTYPE_CODES.get(dtype, 7), list(shape), list(strides))


def rejection_cases(cases: Sequence[tuple], prefix: str):
    """Parametrize (name, mutate, message) cases with ids '<prefix>-<index>-<name>'."""
    return pytest.mark.parametrize("name,mutate,message", cases,
                                   ids=[f"{prefix}-{i}-{c[0]}" for i, c in enumerate(cases)])


def assert_launcher_rejects(launcher: Callable[..., None], args: dict, mutate: Callable[[dict], None],
                            message: str) -> None:
    """Valid `args` with one mutation make `launcher` raise a ValueError matching `message`."""
    mutate(args)
    with pytest.raises(ValueError, match=message):
        launcher(**args)


def assert_launchers_need_gpu(op: str, fwd: Callable[..., None], fwd_args: dict, bwd: Callable[..., None],
                              bwd_args: dict) -> None:
    """Valid calls get past validation and fail only for want of a GPU, naming the op and direction."""
    with pytest.raises(RuntimeError, match=f"{op} forward"):
        fwd(**fwd_args)
    with pytest.raises(RuntimeError, match=f"{op} backward"):
        bwd(**bwd_args)
