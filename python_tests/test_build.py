"""The compiled extension: what build_info reports, and the launchers' argument and device checks."""
import os
import shutil

import pytest

from pvdm_fast.ops import _ext

C = _ext._C
needs_c = pytest.mark.skipif(C is None, reason=f"pvdm_fast._C did not load: {_ext.C_ERROR}")


@needs_c
def test_build_info_is_a_complete_dict():
    info = C.build_info()
    assert isinstance(info, dict)
    for key in ("cuda", "cuda_archs", "cuda_runtime_version", "driver_version", "device_count"):
        assert key in info, key
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert all(isinstance(a, int) for a in info["cuda_archs"])
    assert isinstance(info["device_count"], int) and info["device_count"] >= 0
    if not info["cuda"]:
        assert info["cuda_archs"] == []


def _expected_archs() -> list[int]:
    spec = os.environ.get("PVDM_CUDA_ARCHS", "80;90")
    archs = []
    for item in spec.replace(",", ";").split(";"):
        digits = "".join(ch for ch in item.split("-")[0] if ch.isdigit())
        if digits:
            archs.append(int(digits))
    return archs


@needs_c
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH, so AUTO builds no CUDA")
@pytest.mark.skipif(os.environ.get("PVDM_CUDA", "AUTO").upper() == "OFF", reason="PVDM_CUDA=OFF build")
def test_cuda_kernels_compiled_when_nvcc_is_present():
    info = C.build_info()
    assert info["cuda"], "nvcc is on PATH but _C was built without CUDA kernels"
    assert info["cuda_archs"] == _expected_archs()
    assert info["cuda_runtime_version"] and info["cuda_runtime_version"] >= 11000


def _gn_fwd_args(**overrides):
    args = dict(x=16, y=32, weight=48, bias=64, scale=0, shift=0, mean=80, rstd=96, batch=2,
                channels=64, length=30, groups=32, segments=[10, 20], eps=1e-5, apply_silu=True,
                dtype=0, stream=0)
    args.update(overrides)
    return args


@needs_c
@pytest.mark.skipif(not _ext.cuda_kernels_built(), reason="_C built without CUDA kernels")
@pytest.mark.parametrize("bad, message", [
    (dict(channels=60), "multiple of num_groups"),
    (dict(segments=[10, 21]), "segments sum to 31"),
    (dict(segments=[]), "segments"),
    (dict(segments=[1] * 9, length=9), "segments"),
    (dict(segments=[0, 30]), "positive"),
    (dict(dtype=7), "dtype"),
    (dict(batch=0), "positive"),
    (dict(eps=-1.0), "eps"),
    (dict(x=0), "pointers"),
])
def test_gn_launcher_rejects_bad_arguments_with_value_error(bad, message):
    # validation runs before any CUDA call, so this needs no GPU and never touches the pointers
    with pytest.raises(ValueError, match=message):
        C.gn_silu_fwd(**_gn_fwd_args(**bad))


@needs_c
@pytest.mark.skipif(not _ext.cuda_kernels_built(), reason="_C built without CUDA kernels")
def test_gn_launcher_without_a_gpu_raises_runtime_error():
    if C.build_info()["device_count"] > 0:
        pytest.skip("a GPU is visible; this checks the no-GPU path")
    with pytest.raises(RuntimeError, match="(?i)cuda|gpu|device"):
        C.gn_silu_fwd(**_gn_fwd_args())
