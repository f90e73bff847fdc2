"""The one place test tolerances live (DESIGN.md: the 2x rule against PyTorch's own error)."""

import torch

FLOOR = 1e-5          # absolute floor added to every low-precision bound
FP32_RTOL = 1e-5      # fp32 kernels vs float64 truth, relative to the truth's max magnitude
FACTOR = 2.0          # a kernel may be at most this many times worse than torch in the same dtype


def max_err(a: torch.Tensor, truth: torch.Tensor) -> float:
    assert not torch.isnan(a).any(), "NaN in output"
    return (a.double() - truth.double()).abs().max().item()


def assert_close_2x(out: torch.Tensor, torch_same_dtype: torch.Tensor, truth: torch.Tensor, what: str = "") -> None:
    """max|out - truth| <= 2 * max|torch_same_dtype - truth| + FLOOR."""
    err, ref_err = max_err(out, truth), max_err(torch_same_dtype, truth)
    bound = FACTOR * ref_err + FLOOR
    assert err <= bound, f"{what}: error {err:.3e} > bound {bound:.3e} (torch in same dtype: {ref_err:.3e})"


def assert_fp32_close(out: torch.Tensor, truth: torch.Tensor, what: str = "", rtol: float = FP32_RTOL) -> None:
    """fp32 result within rtol of the float64 truth, relative to the truth's largest magnitude."""
    err = max_err(out, truth)
    scale = truth.double().abs().max().item() + 1e-12
    assert err <= rtol * scale + 1e-7, f"{what}: error {err:.3e} > {rtol:.0e} x {scale:.3e}"
