"""Launching a pipelined Triton kernel on a GPU with less shared memory than the launcher planned for.

A software-pipelined loop keeps `num_stages` copies of its tiles in shared memory. The attention
launchers pick their depth for an H100/H200 (228 KB per multiprocessor); an A100 has 164 KB and the
sm_86/sm_89 GPUs (RTX 30xx/40xx, A40, L40) 100 KB, where some float32 and head-dim-128 variants do not
fit. Triton then refuses the launch (OutOfResources, raised before anything runs), so the launch is
retried one stage shallower, down to no pipelining, and the depth that fitted is remembered per
kernel variant and device. benchmarks/triton_compile.py applies the same rule when it compiles ahead.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from triton.runtime.errors import OutOfResources

# Kernels launched through launch(): what benchmarks/triton_compile.py may step down the same way.
STAGED: set = set()
_DEPTH: Dict[Tuple, int] = {}


def staged(kernel):
    """Marks `kernel` as launched through launch() (its num_stages may be lowered to fit)."""
    STAGED.add(kernel)
    return kernel


def _key(kernel, args: tuple, options: dict) -> Tuple:
    first = args[0]
    device = getattr(first, "device", None)
    if device is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return kernel, device, getattr(first, "dtype", None), tuple(sorted(options.items()))


def launch(kernel, grid, args: tuple, num_stages: int, **options) -> int:
    """kernel[grid](*args, num_stages=<n>, **options) with the deepest n <= num_stages that fits the
    device's shared memory (args[0]'s device); returns n. Where every kernel fits (the usual case) this
    costs one dict check per launch."""
    depth = min(num_stages, _DEPTH.get(_key(kernel, args, options), num_stages)) if _DEPTH else num_stages
    while True:
        try:
            kernel[grid](*args, num_stages=depth, **options)
        except OutOfResources:
            if depth <= 1:
                raise
            depth -= 1
            continue
        if depth != num_stages:
            _DEPTH[_key(kernel, args, options)] = depth
        return depth
