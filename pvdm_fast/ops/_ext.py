"""Optional accelerators: the compiled `_C` extension and Triton.

Each is imported once; when one fails to load, the reason is recorded (shown by `pvdm info`) and the
ops fall back to their PyTorch references instead of raising at import time.
"""

from __future__ import annotations

import os

import torch

# dtype codes understood by the launchers in csrc/ (kernels/common.h: DType)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

try:
    from pvdm_fast import _C  # type: ignore[attr-defined]

    C_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the build
    _C = None
    C_ERROR = f"{type(exc).__name__}: {exc}"

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    TRITON_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    TRITON_ERROR = f"{type(exc).__name__}: {exc}"


def build_info() -> dict:
    """`_C.build_info()`, or a CPU-only description with the import error when `_C` is missing."""
    if _C is None:
        return {"cuda": False, "cuda_archs": [], "cuda_runtime_version": None, "driver_version": None,
                "device_count": 0, "error": C_ERROR}
    return dict(_C.build_info())


def triton_interpreted() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cuda_kernels_built() -> bool:
    return _C is not None and bool(_C.build_info()["cuda"])


def stream_handle(device: torch.device) -> int:
    """The raw handle of the current CUDA stream on `device`, as the launchers take it."""
    return torch.cuda.current_stream(device).cuda_stream
