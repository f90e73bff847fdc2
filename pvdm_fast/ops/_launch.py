"""What the CUDA and Triton backends of the fused row ops (triplane_decode, axis_gather) share: tensors
as the `_C` launchers take them, the outputs of a call without LayerNorm weights, the device guard for
Triton launches, and imports of the Triton backends deferred to their first call (importing triton is
slow and needs a working toolchain, so a CUDA- or reference-only run never pays for it)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, ContextManager, Optional, Sequence, Tuple

import torch
from torch import Tensor

from pvdm_fast.ops import _ext

LayerNormOutputs = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def tensor_arg(t: Optional[Tensor]):
    """What the `_C` launchers take for a tensor: (pointer, dtype code, shape, strides), or None.

    Shapes and strides travel with the pointer so the launchers can reject a wrong shape or a
    non-contiguous tensor with a ValueError instead of reading out of bounds.
    """
    if t is None:
        return None
    return (t.data_ptr(), _ext.DTYPE_CODES.get(t.dtype, -1), list(t.shape), list(t.stride()))


def run_cuda(launcher: Callable[..., None], device: torch.device, tensors: Sequence[Optional[Tensor]],
             *scalars: Any) -> None:
    """launcher(*tensor args, *scalars, stream) on `device`'s current stream."""
    with torch.cuda.device(device):
        launcher(*(tensor_arg(t) for t in tensors), *scalars, _ext.stream_handle(device))


def layernorm_weights(norm_weight: Optional[Tensor],
                      norm_bias: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The LayerNorm weight and bias as the kernels read them (float32, contiguous), or (None, None)."""
    if norm_weight is None:
        return None, None
    return norm_weight.float().contiguous(), norm_bias.float().contiguous()


def layernorm_outputs(out: Tensor, rows: Sequence[int], fused: bool) -> LayerNormOutputs:
    """Buffers for the fused LayerNorm of `out` (y like out, float32 mean and rstd of shape `rows`), or
    three Nones without LayerNorm weights."""
    if not fused:
        return None, None, None
    mean = out.new_empty(tuple(rows), dtype=torch.float32)
    return torch.empty_like(out), mean, torch.empty_like(mean)


def unfused_outputs(out: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, Y, mean, rstd) of a forward without LayerNorm weights: distinct empty tensors, because
    custom-op outputs may not alias each other."""
    return out, out.new_empty(0), out.new_empty(0, dtype=torch.float32), out.new_empty(0, dtype=torch.float32)


def blocks_per_program(blocks: int, programs: int = 1024, most: int = 16) -> Tuple[int, int]:
    """(blocks each program walks, programs) for a kernel that writes one row of partial sums per program:
    at least `programs` programs while the blocks allow it (enough to fill a GPU), at most `most` blocks
    each, so the partial sums (written, then read back once) stay a few percent of the data read."""
    if blocks < 1:
        raise ValueError(f"blocks_per_program needs at least one block, got {blocks}")
    per = max(1, min(most, blocks // programs))
    return per, -(-blocks // per)


def device_guard(x: Tensor) -> ContextManager:
    """Launch Triton kernels on x's device (no-op for the CPU interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def triton_backend(name: str) -> Tuple[Callable, Callable]:
    """(forward, backward) of pvdm_fast.ops.triton.<name>, imported on their first call."""
    module = f"pvdm_fast.ops.triton.{name}"

    def forward(*args):
        return importlib.import_module(module).forward(*args)

    def backward(*args):
        return importlib.import_module(module).backward(*args)

    return forward, backward
