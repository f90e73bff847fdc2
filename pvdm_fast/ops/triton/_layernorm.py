"""The fused LayerNorm of the Triton row kernels (triplane_decode, axis_gather): a program holds whole
rows of C channels, so the statistics come from registers with no second read of the row."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def layernorm_rows(v, m, cols, cm, G, Bt, C, eps):
    # v: (rows, BLOCK_C) float32, zero where the mask m is off; cols/cm: the channel indices and mask.
    # Returns (y, mean, rstd) with the centred two-pass variance, as the reference computes it.
    mean = tl.sum(v, axis=1) / C
    d = tl.where(m, v - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    g = tl.load(G + cols, mask=cm, other=0.0)
    bt = tl.load(Bt + cols, mask=cm, other=0.0)
    return d * rstd[:, None] * g[None, :] + bt[None, :], mean, rstd
