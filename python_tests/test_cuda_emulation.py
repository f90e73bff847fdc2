"""The CPU emulation that runs kernels/ in the test suite (python_tests/cuda_emu) checked against CUDA's
semantics: shuffles, barriers, the launch limits, the errors a GPU would hang on, the 16-bit
conversions, and the source translation; and every CUDA kernel under AddressSanitizer (memcheck)."""

import ctypes
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import cuda_emu

MSG = 512


@pytest.fixture(scope="module")
def lib():
    try:
        return ctypes.CDLL(str(cuda_emu.build()))
    except cuda_emu.EmulationUnavailable as exc:
        pytest.skip(f"the CUDA emulation cannot be built here: {exc}")


def _call(fn, *args):
    msg = ctypes.create_string_buffer(MSG)
    code = fn(*args, msg, MSG)
    return code, msg.value.decode()


def _ptr(t: torch.Tensor):
    ptr = ctypes.c_void_p(t.data_ptr())
    ptr.tensor = t  # alive until the call returns, also for `_ptr(torch.zeros(n))`
    return ptr


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle", "shuffle:7"])
def test_shuffles_read_the_lanes_cuda_defines(lib, monkeypatch, order):
    monkeypatch.setenv("PVDM_EMU_ORDER", order)
    out = torch.full((64 * 3,), -1.0)
    assert _call(lib.emu_shuffles, _ptr(out), 64) == (0, "")
    lane = torch.arange(64) % 32
    expect = torch.stack([lane ^ 1, torch.where(lane + 3 < 32, lane + 3, lane),
                          torch.where(lane >= 5, lane - 5, lane)], 1).flatten().float()
    torch.testing.assert_close(out, expect, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle", "shuffle:7"])
def test_barrier_orders_shared_memory_across_warps_and_blocks(lib, monkeypatch, order):
    monkeypatch.setenv("PVDM_EMU_ORDER", order)
    blocks, threads = 3, 96
    out = torch.full((blocks * threads,), -1.0)
    assert _call(lib.emu_barrier_neighbour, _ptr(out), blocks, threads) == (0, "")
    t = torch.arange(threads)
    expect = torch.cat([((t + 1) % threads + 1000 * b).float() for b in range(blocks)])
    torch.testing.assert_close(out, expect, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_shuffled_order_exposes_a_missing_barrier(lib, monkeypatch, seed):
    # Each thread writes its slot and, without __syncthreads, reads the next warp's: some reader must run
    # before its writer (and read the NaN that fresh shared memory holds).
    monkeypatch.setenv("PVDM_EMU_ORDER", f"shuffle:{seed}")
    out = torch.zeros(128)
    assert _call(lib.emu_racy_neighbour, _ptr(out), 128) == (0, "")
    assert not torch.equal(out, ((torch.arange(128) + 32) % 128).float())


def test_unwritten_shared_memory_reads_nan(lib):
    out = torch.zeros(64)
    assert _call(lib.emu_read_unwritten, _ptr(out), 64)[0] == 0
    assert torch.isnan(out).all()


def test_barrier_against_shuffle_is_a_deadlock_error(lib):
    code, msg = _call(lib.emu_barrier_against_shuffle, _ptr(torch.zeros(64)))
    assert code != 0 and "deadlock" in msg and "__syncthreads" in msg, msg


def test_full_mask_shuffle_after_a_lane_exited_is_an_error(lib):
    code, msg = _call(lib.emu_shuffle_after_exit, _ptr(torch.zeros(32)))
    assert code != 0 and "exited" in msg and "__shfl_down_sync" in msg, msg


def test_full_mask_shuffle_in_a_partial_warp_is_an_error(lib):
    code, msg = _call(lib.emu_shuffles, _ptr(torch.zeros(48 * 3)), 48)
    assert code != 0 and "only 16 threads" in msg, msg


@pytest.mark.parametrize("shape,smem,limit,ok", [
    ((1, 1, 1024, 1, 1), 0, -1, True),
    ((1, 1, 1025, 1, 1), 0, -1, False),       # over 1024 threads
    ((1, 1, 2, 2, 65), 0, -1, False),         # block z over 64
    ((1, 65536, 32, 1, 1), 0, -1, False),     # grid y over 65535
    ((1, 1, 32, 1, 1), 48 * 1024, -1, True),  # CUDA's default dynamic shared memory limit
    ((1, 1, 32, 1, 1), 48 * 1024 + 4, -1, False),
    ((1, 1, 32, 1, 1), 96 * 1024, 96 * 1024, True),  # after cudaFuncSetAttribute
    ((1, 1, 32, 1, 1), 0, 163 * 1024 + 4, False),    # over sm_80's opt-in limit: the attribute is refused
])
def test_launch_limits(lib, shape, smem, limit, ok):
    code, msg = _call(lib.emu_launch_shape, *shape, smem, limit)
    assert (code == 0) == ok, msg
    if not ok:
        assert msg, "a refused launch says why"


STATIC = 1024  # selftest.cpp's static_and_dynamic: 256 floats of static shared memory
SM80_OPTIN = 163 * 1024  # the most shared memory a block may hold with the opt-in, on sm_80
SM90_OPTIN = 227 * 1024


@pytest.mark.parametrize("warm", [False, True], ids=["first_launch", "known_kernel"])
@pytest.mark.parametrize("smem,limit,ok", [
    (48 * 1024 - STATIC, -1, True),       # static + dynamic = CUDA's default 48 KB per block
    (48 * 1024 - STATIC + 4, -1, False),  # 4 B over it: "invalid argument" on a GPU
    (48 * 1024, 48 * 1024, True),         # with the opt-in only the dynamic part is limited
    (SM80_OPTIN - STATIC, SM80_OPTIN - STATIC, True),
])
def test_static_shared_memory_counts_toward_the_launch_limit(lib, warm, smem, limit, ok):
    out = torch.full((128,), -1.0)
    code, msg = _call(lib.emu_static_shared, _ptr(out), smem, limit, int(warm))
    if ok:
        assert (code, msg) == (0, "")
        torch.testing.assert_close(out, (3 * (torch.arange(128) % 64) + 1).float(), rtol=0, atol=0)
    else:
        assert code == 1, msg  # cudaErrorInvalidValue, as a GPU refuses the launch
        assert f"static shared memory {STATIC} B + dynamic {smem} B" in msg and "49152 B" in msg, msg


@pytest.mark.parametrize("limit", [SM80_OPTIN - STATIC + 4, SM90_OPTIN - STATIC + 4])
def test_static_shared_memory_plus_opt_in_over_the_maximum(lib, limit):
    # A kernel the emulation ran before: its static size is known, cudaFuncSetAttribute is refused.
    code, msg = _call(lib.emu_static_shared, _ptr(torch.zeros(128)), 0, limit, 1)
    assert code == 1 and "refused" in msg, msg
    # A first launch: a setting within the maximum alone is taken, and the launch fails once a thread
    # reaches the static array.
    code, msg = _call(lib.emu_static_shared, _ptr(torch.zeros(128)), 0, limit, 0)
    if limit > SM80_OPTIN:
        assert code == 1 and "refused" in msg, msg
    else:
        assert code == 1 and f"static shared memory {STATIC} B + the cudaFuncSetAttribute opt-in of {limit} B" in msg
        assert "refuses that cudaFuncSetAttribute" in msg, msg


def test_opt_in_lasts_until_activate_resets_it(lib):
    out = torch.zeros(128)
    assert _call(lib.emu_static_shared, _ptr(out), 48 * 1024, 48 * 1024, 0) == (0, "")
    assert _call(lib.emu_static_shared_again, _ptr(out), 48 * 1024) == (0, "")  # as on a GPU: the setting lasts
    # activate() (the emulated_cuda fixture) starts each test as a new process would, without settings.
    lib.pvdm_emu_reset_attributes()
    code, msg = _call(lib.emu_static_shared_again, _ptr(out), 48 * 1024)
    assert code == 1 and "without the cudaFuncAttributeMaxDynamicSharedMemorySize opt-in" in msg, msg


def test_half_conversions_match_torch_bit_for_bit(lib):
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    halves = bits.view(torch.float16)
    back = torch.empty(65536)
    lib.emu_from_half(_ptr(bits), _ptr(back), 65536)
    finite = ~torch.isnan(halves)
    assert torch.equal(back[finite], halves.float()[finite]) and torch.isnan(back[~finite]).all()

    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(200000, generator=g) * 10.0 ** torch.randint(-9, 6, (200000,), generator=g),
        halves.float()[finite],                         # every half, exactly representable
        (halves.float()[finite] + halves.float()[finite].roll(1)) / 2,  # midpoints: ties to even
        torch.tensor([65504.0, 65519.99, 65520.0, 1e6, -1e6, float("inf"), -float("inf"), 2.0**-25, 2.0**-26,
                      3 * 2.0**-26, 1e-45, -0.0, 0.0]),
    ])
    x = x[torch.isfinite(x) | torch.isinf(x)]
    for name, fn, dtype in [("half", lib.emu_to_half, torch.float16), ("bf16", lib.emu_to_bf16, torch.bfloat16)]:
        got = torch.empty(x.numel(), dtype=torch.int16)
        fn(_ptr(x), _ptr(got), x.numel())
        expect = x.to(dtype).view(torch.int16)
        bad = (got != expect).nonzero().flatten()
        assert bad.numel() == 0, f"{name}: {x[bad[:5]].tolist()} -> {got[bad[:5]].tolist()} != {expect[bad[:5]].tolist()}"
    nan = torch.tensor([float("nan")])
    for fn, dtype in [(lib.emu_to_half, torch.float16), (lib.emu_to_bf16, torch.bfloat16)]:
        got = torch.empty(1, dtype=torch.int16)
        fn(_ptr(nan), _ptr(got), 1)
        assert torch.isnan(got.view(dtype)).all()


def test_translate_rewrites_launches_and_shared_memory():
    src = ("extern __shared__ float smem[];\n"
           "k<T, 4><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(p, q);\n"
           "kernel<<<grid, block>>>();\n")
    out = cuda_emu.translate(src, "x.cu")
    assert "float* const smem = ::emu::dynamic_shared<float>();" in out
    assert "::emu::launch(::emu::config(static_cast<unsigned>(n), kThreads, 0, stream), k<T, 4>, p, q);" in out
    assert "::emu::launch(::emu::config(grid, block), kernel);" in out
    out = cuda_emu.translate("  __shared__ float scratch[kBytes / sizeof(float)];  // __shared__ note\n"
                             "__shared__ typename R<T>::Storage s[2][4];\n", "x.cu")
    assert out.splitlines() == [
        "  static float scratch[kBytes / sizeof(float)]; [[maybe_unused]] const bool scratch_emu_static_shared = "
        "::emu::static_shared(&scratch, sizeof(scratch));  // __shared__ note",
        "static typename R<T>::Storage s[2][4]; [[maybe_unused]] const bool s_emu_static_shared = "
        "::emu::static_shared(&s, sizeof(s));"]
    for bad in ["extern __shared__ __align__(16) char raw[];", "(*table[i])<<<1, 32>>>(p);",
                "__shared__ float a[4], b[4];", "__shared__ float a[4] = {};"]:
        with pytest.raises(RuntimeError, match="cannot translate"):
            cuda_emu.translate(bad, "bad.cu")


def _memcheck(monkeypatch, *args):
    """python_tests/cuda_emu/memcheck.py in a Python with AddressSanitizer preloaded."""
    cxx = cuda_emu._compiler()
    asan = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(asan) or not os.path.exists(asan):
        pytest.skip(f"{cxx} has no AddressSanitizer runtime (libasan.so)")
    monkeypatch.setenv("PVDM_EMU_SANITIZE", "address")
    cuda_emu.build()  # here, not under the preloaded runtime
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:halt_on_error=1", PVDM_EMU_SANITIZE="address")
    script = pathlib.Path(cuda_emu.__file__).with_name("memcheck.py")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)


def test_every_cuda_kernel_is_clean_under_address_sanitizer(monkeypatch):
    # The CPU counterpart of gpu_check.sh's compute-sanitizer memcheck: benchmarks/sanitizer_driver.py's
    # calls (every kernel, forward and backward, vectorised and scalar paths, fp32 and bf16).
    run = _memcheck(monkeypatch)
    assert run.returncode == 0 and "AddressSanitizer" not in run.stderr, run.stdout + run.stderr[-4000:]
    for op in ("group_norm_silu", "triplane_decode", "axis_gather"):
        for dtype in ("float32", "bfloat16"):
            assert run.stdout.count(f"ran {op} torch.{dtype}") == 2, run.stdout


def test_address_sanitizer_setup_reports_a_read_past_a_tensor(monkeypatch):
    run = _memcheck(monkeypatch, "--read-past-end")
    assert run.returncode != 0 and "heap-buffer-overflow" in run.stderr, run.stdout + run.stderr[-4000:]
