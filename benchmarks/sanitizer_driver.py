"""Calls every CUDA kernel of `_C` forward and backward once on small, odd shapes, for
`compute-sanitizer --tool memcheck|racecheck python benchmarks/sanitizer_driver.py` (gpu_check.sh).

Odd sizes, and 37 channels beside 64 for the row kernels, take their scalar paths (no 16-byte access)
as well as the vectorised ones. python_tests/cuda_emu/memcheck.py runs the same calls on the CPU
emulation of the kernels under AddressSanitizer.
"""
from __future__ import annotations

import sys

import torch


def _grads(out, *inputs):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    loss = sum((o.float() * torch.randn_like(o.float())).sum() for o in outs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def run(device: torch.device) -> list[str]:
    from pvdm_fast import ops

    done = []
    with ops.use_backend("cuda"):
        for dtype in (torch.float32, torch.bfloat16):
            for channels in (37, 64):
                gn_channels = -(-channels // 8) * 8  # 40, 64: divisible into 8 groups
                x = torch.randn(2, gn_channels, 35 + 27 + 11, device=device, dtype=dtype, requires_grad=True)
                w = torch.randn(gn_channels, device=device, dtype=dtype, requires_grad=True)
                b = torch.randn(gn_channels, device=device, dtype=dtype, requires_grad=True)
                sc = torch.randn(2, gn_channels, device=device, dtype=dtype, requires_grad=True)
                sh = torch.randn(2, gn_channels, device=device, dtype=dtype, requires_grad=True)
                y = ops.group_norm_silu(x, w, b, scale=sc, shift=sh, segments=[35, 27, 11], num_groups=8)
                _grads(y, x, w, b, sc, sh)
                done.append(f"group_norm_silu {dtype} C={gn_channels}")

                grid = (5, 7, 3)
                t, h, wd = grid
                latent = torch.randn(2, 4, h * wd + t * wd + t * h, device=device, dtype=dtype,
                                     requires_grad=True)
                pw = [torch.randn(channels, 4, 1, 1, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
                pb = [torch.randn(channels, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
                gamma = torch.randn(channels, device=device, dtype=dtype, requires_grad=True)
                beta = torch.randn(channels, device=device, dtype=dtype, requires_grad=True)
                v, normed = ops.triplane_decode(latent, grid, pw, pb, norm_weight=gamma, norm_bias=beta)
                _grads((v, normed), latent, *pw, *pb, gamma, beta)
                v = ops.triplane_decode(latent, grid, pw, pb)
                _grads(v, latent, *pw, *pb)
                done.append(f"triplane_decode {dtype} C={channels}")

                tokens = torch.randn(2, t * h * wd, channels, device=device, dtype=dtype, requires_grad=True)
                for axis, length in (("xy", t), ("yt", h), ("xt", wd)):
                    token = torch.randn(1, 1, channels, device=device, dtype=dtype, requires_grad=True)
                    pos = torch.randn(1, length + 1, channels, device=device, dtype=dtype, requires_grad=True)
                    s, y = ops.axis_gather(tokens, grid, axis, token, pos, norm_weight=gamma, norm_bias=beta)
                    _grads((s, y), tokens, token, pos, gamma, beta)
                done.append(f"axis_gather {dtype} C={channels}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return done


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitizer_driver.py: no CUDA device visible; nothing to check")
        return 0
    from pvdm_fast.ops import _ext

    if not _ext.cuda_kernels_built():
        print("sanitizer_driver.py: pvdm_fast._C was built without CUDA kernels", file=sys.stderr)
        return 1
    for line in run(torch.device("cuda")):
        print("ran", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
