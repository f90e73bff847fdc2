"""Test helpers for the Triton attention kernels behind axial_attention and joint_attention
(pvdm_fast/ops/triton/axial_attention.py): record what each launch compiled in, and have the launchers
pick a GPU's tiles in the interpreter, so paths that only a GPU takes by default run on the CPU too."""

from __future__ import annotations

from types import SimpleNamespace
from typing import List


def _kernels():
    # imported when a test runs, as the other tests do, so that collecting needs no Triton
    from pvdm_fast.ops.triton import axial_attention

    return axial_attention


def record_launches(monkeypatch) -> List[SimpleNamespace]:
    """From now on, every attention kernel launch in order: `kernel` ("forward", "dq" or "dkdv"), `dtype`
    (q's), `programs` (grid size) and its launch options (G, BMP, BNP, BD, F32, ONE_KB, ...)."""
    from pvdm_fast.ops.triton import _fit

    k = _kernels()
    names = {k._attn_fwd: "forward", k._attn_bwd_dq: "dq", k._attn_bwd_dkdv: "dkdv"}
    seen, real = [], _fit.launch

    def launch(kernel, grid, args, num_stages, **options):
        seen.append(SimpleNamespace(kernel=names.get(kernel, kernel), dtype=args[0].dtype, programs=grid[0],
                                    **options))
        return real(kernel, grid, args, num_stages, **options)

    monkeypatch.setattr(_fit, "launch", launch)
    return seen


def pick_gpu_tiles(monkeypatch) -> None:
    """_tiles chooses as it does on a GPU, where the forward takes 128-row q tiles at head dim <= 64 (the
    interpreter stays at 64 rows). Only the tile choice changes: the dot precision is still the
    interpreter's ieee."""
    kernels = _kernels()
    real = kernels._tiles
    on_gpu = SimpleNamespace(triton_interpreted=lambda: False)

    def tiles(p, backward, itemsize=2):
        with monkeypatch.context() as m:
            m.setattr(kernels, "_ext", on_gpu)
            return real(p, backward, itemsize)

    monkeypatch.setattr(kernels, "_tiles", tiles)
