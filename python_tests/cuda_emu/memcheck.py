"""Memcheck on the CPU: every CUDA kernel forward and backward on odd shapes (the calls of
benchmarks/sanitizer_driver.py, which compute-sanitizer runs on a GPU) in the emulation built with
AddressSanitizer, so a read or write outside a tensor aborts with a report.

    LD_PRELOAD=$(g++ -print-file-name=libasan.so) PVDM_EMU_SANITIZE=address \\
        python python_tests/cuda_emu/memcheck.py [--read-past-end]

--read-past-end runs a kernel that reads one element past a tensor instead: the control that shows
the setup catches such a read. python_tests/test_cuda_emulation.py runs both.
"""
from __future__ import annotations

import argparse
import ctypes
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "benchmarks")]

import pytest  # noqa: E402  (its MonkeyPatch: the same routing as the emulated_cuda fixture)
import torch  # noqa: E402

import cuda_emu  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-past-end", action="store_true", help="the control: read one float past a tensor")
    args = parser.parse_args()
    if cuda_emu.sanitizer() != "address":
        print("memcheck.py: set PVDM_EMU_SANITIZE=address (and preload libasan)", file=sys.stderr)
        return 2
    if args.read_past_end:
        lib = ctypes.CDLL(str(cuda_emu.build()))
        src, dst = torch.randn(32), torch.empty(33)
        msg = ctypes.create_string_buffer(256)
        lib.emu_copy(ctypes.c_void_p(src.data_ptr()), ctypes.c_void_p(dst.data_ptr()), 33, msg, 256)
        print("read past the end without a report")
        return 0
    import sanitizer_driver

    with pytest.MonkeyPatch.context() as mp:
        emulation = cuda_emu.activate(mp)
        for line in sanitizer_driver.run(torch.device("cpu")):
            print("ran", line)
    print("launcher calls:", dict(sorted(emulation.calls.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
