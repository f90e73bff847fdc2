"""Shared test setup: Triton's CPU interpreter when there is no GPU, the gpu marker, golden files."""

import os
import pathlib

# Must happen before anything imports triton: on a machine without CUDA, Triton kernels run in the
# interpreter so that CI checks them on the CPU.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none is visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _ieee_fp32_matmuls():
    """float32 matmuls in IEEE fp32 for every test: FP32_RTOL (1e-5) assumes them, and the Triton attention
    kernels follow torch.backends.cuda.matmul.allow_tf32 (TF32 dots when it is on: errors ~5e-4). The flag
    is on in any process started with TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (some GPU images set it)."""
    if not _HAS_CUDA:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def golden_dir() -> pathlib.Path:
    """`../shared/reference/golden` beside the checkout, or $PVDM_GOLDEN_DIR."""
    env = os.environ.get("PVDM_GOLDEN_DIR")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "golden"


@pytest.fixture
def golden():
    """Path to the golden folder; skips (with the path) when it is absent."""
    path = golden_dir()
    if not path.is_dir():
        pytest.skip(f"golden vectors not found at {path} (set PVDM_GOLDEN_DIR)")
    return path


@pytest.fixture
def emulated_cuda(monkeypatch):
    """The `cuda` backends run kernels/ in the CPU emulation of python_tests/cuda_emu, on CPU tensors
    (a cuda_emu.Emulation: `.calls` counts the launcher calls). torch.empty fills NaN meanwhile
    (deterministic mode), so an output element no kernel writes shows."""
    import cuda_emu

    try:
        emulation = cuda_emu.activate(monkeypatch)
    except cuda_emu.EmulationUnavailable as exc:
        pytest.skip(f"the CUDA emulation cannot be built here: {exc}")
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield emulation
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
