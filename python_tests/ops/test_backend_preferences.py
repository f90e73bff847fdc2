"""`auto` follows measured speed: preferences written by the kernel benchmark, read by dispatch."""
import importlib.util
import pathlib

import pytest
import torch

from pvdm_fast.ops import dispatch

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def prefs_file(tmp_path, monkeypatch):
    path = tmp_path / "prefs.json"
    monkeypatch.setenv("PVDM_BACKEND_PREFS", str(path))
    monkeypatch.setattr(dispatch, "_prefs", None)
    return path


def _kernels_module():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_measurements_the_static_order_applies(prefs_file):
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == dispatch.AUTO_ORDER


def test_a_corrupt_file_means_no_measurements(prefs_file):
    prefs_file.write_text("{not json")
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == dispatch.AUTO_ORDER


def test_saved_measurements_reorder_auto_per_gpu_op_and_dtype(prefs_file):
    dispatch.save_preferences({"NVIDIA H100": {"group_norm_silu": {"bfloat16": ["triton", "cuda"]}}})
    dispatch.save_preferences({"NVIDIA H100": {"group_norm_silu": {"float16": ["cuda"]}}})  # merged, not replaced
    assert prefs_file.exists()
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == ("triton", "cuda")
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.float16) == ("cuda", "triton")
    assert dispatch.auto_order("group_norm_silu", "NVIDIA A100", torch.bfloat16) == dispatch.AUTO_ORDER
    assert dispatch.auto_order("triplane_decode", "NVIDIA H100", torch.bfloat16) == dispatch.AUTO_ORDER
    dispatch._prefs = None  # a new process reads the file
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == ("triton", "cuda")


def test_preferences_from_benchmark_rows_rank_by_total_time():
    kernels = _kernels_module()
    rows = [
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd", "backend": "cuda", "ms": 1.0},
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd", "backend": "triton", "ms": 2.0},
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "cuda", "ms": 5.0},
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "triton", "ms": 3.0},
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "cuda", "ms": 1.0},
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "torch.compile", "ms": 0.1},
        {"op": "axis_gather[xy]+ln", "dtype": "float16", "pass": "fwd", "backend": "triton", "ms": 1.0},
        {"op": "axis_gather[xy]+ln", "dtype": "float16", "pass": "fwd", "backend": "cuda", "error": "boom"},
    ]
    prefs = kernels.preferences_from_rows(rows, "GPU")
    # fwd+bwd decides (cuda 6.0 total vs triton 3.0); torch.compile is not a fused backend
    assert prefs["GPU"]["group_norm_silu"]["bfloat16"] == ["triton", "cuda"]
    assert prefs["GPU"]["axis_gather"]["float16"] == ["triton"]


def test_use_backend_can_force_a_subset_of_ops():
    x = torch.zeros(1)
    gn, tri = dispatch.REGISTRY["group_norm_silu"], dispatch.REGISTRY["triplane_decode"]
    with dispatch.use_backend("reference", ops=["group_norm_silu"]):
        assert dispatch.forced_backend("group_norm_silu") == "reference"
        assert dispatch.forced_backend("triplane_decode") is None
        assert dispatch.select(gn, x) == "reference" and dispatch.select(tri, x) == "reference"
    assert dispatch.forced_backend("group_norm_silu") is None
    with pytest.raises(ValueError, match="unknown op"):
        with dispatch.use_backend("triton", ops=["no_such_op"]):
            pass
