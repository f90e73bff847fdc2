"""`auto` follows measured speed: preferences written by the kernel benchmark, read by dispatch."""
import importlib
import importlib.util
import json
import pathlib

import pytest
import torch

from pvdm_fast.ops import dispatch

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def prefs_file(tmp_path, monkeypatch):
    path = tmp_path / "prefs.json"
    monkeypatch.setenv("PVDM_BACKEND_PREFS", str(path))
    monkeypatch.setattr(dispatch, "SHIPPED_PREFS", tmp_path / "no_shipped_prefs.json")  # independent of the repo's
    monkeypatch.setattr(dispatch, "_prefs", None)
    return path


def _kernels_module():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_measurements_apply_and_the_users_file_overrides_them(prefs_file, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"NVIDIA H100": {
        "group_norm_silu": {"bfloat16": ["triton", "cuda"], "float16": ["triton", "cuda"]},
        "axial_attention@space-L1024": {"bfloat16": {"fwd": "sdpa"}}}}))
    monkeypatch.setattr(dispatch, "SHIPPED_PREFS", shipped)
    dispatch._prefs = None
    bf16, fp16 = torch.bfloat16, torch.float16
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", bf16) == ("triton", "cuda")
    assert dispatch.sdpa_wins(dispatch.load_preferences()["NVIDIA H100"], "axial_attention", "space-L1024", bf16,
                              grad=False)
    dispatch.save_preferences({"NVIDIA H100": {"group_norm_silu": {"bfloat16": ["cuda", "triton"]}}})
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", bf16) == ("cuda", "triton")  # the user's
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", fp16) == ("triton", "cuda")  # still shipped
    assert "axial_attention@space-L1024" not in json.loads(prefs_file.read_text())  # only the user's own
    dispatch._prefs = None
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", bf16) == ("cuda", "triton")


def test_without_measurements_the_static_order_applies(prefs_file):
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == dispatch.AUTO_ORDER


def test_a_corrupt_file_means_no_measurements(prefs_file):
    prefs_file.write_text("{not json")
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == dispatch.AUTO_ORDER


def test_a_file_of_the_wrong_shape_means_no_measurements(prefs_file):
    # valid JSON, but hand-edited or from something else: ignored, never a crash
    for content in ('["a list"]', '{"NVIDIA H100": ["x"]}', '{"NVIDIA H100": {"group_norm_silu": "cuda"}}',
                    '{"NVIDIA H100": {"group_norm_silu": {"bfloat16": "cuda"}}}'):
        prefs_file.write_text(content)
        dispatch._prefs = None
        assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == dispatch.AUTO_ORDER
    dispatch.save_preferences({"NVIDIA H100": {"group_norm_silu": {"bfloat16": ["triton", "cuda"]}}})  # repaired
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == ("triton", "cuda")
    prefs_file.write_text('["a list"]')
    dispatch.save_preferences({"NVIDIA H100": {"group_norm_silu": {"bfloat16": ["triton"]}}})
    assert dispatch.auto_order("group_norm_silu", "NVIDIA H100", torch.bfloat16) == ("triton", "cuda")
    bf16 = torch.bfloat16
    for gpu_prefs in (["x"], {"axial_attention@time-L16": "sdpa"}, {"axial_attention@time-L16": {"bfloat16": "sdpa"}},
                      {5: {}}):
        assert not dispatch.sdpa_wins(gpu_prefs, "axial_attention", "time-L16", bf16, grad=False)


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
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "triton", "ms": 1.5},
        {"op": "group_norm_silu", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "torch.compile", "ms": 0.1},
        {"op": "axis_gather[xy]+ln", "dtype": "float16", "pass": "fwd", "backend": "triton", "ms": 1.0},
        {"op": "axis_gather[xy]+ln", "dtype": "float16", "pass": "fwd", "backend": "cuda", "error": "boom"},
        # cuda failed on the second shape: its one time is smaller than triton's two, yet triton ranks first
        {"op": "triplane_decode", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "cuda", "ms": 1.0},
        {"op": "triplane_decode", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "triton", "ms": 1.2},
        {"op": "triplane_decode", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "triton", "ms": 1.2},
        {"op": "triplane_decode", "dtype": "bfloat16", "pass": "fwd+bwd", "backend": "cuda", "error": "launch"},
    ]
    prefs = kernels.preferences_from_rows(rows, "GPU")
    # fwd+bwd decides (cuda 6.0 total vs triton 4.5); torch.compile is not a fused backend
    assert prefs["GPU"]["group_norm_silu"]["bfloat16"] == ["triton", "cuda"]
    assert prefs["GPU"]["axis_gather"]["float16"] == ["triton"]
    assert prefs["GPU"]["triplane_decode"]["bfloat16"] == ["triton", "cuda"]


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


def test_sdpa_routes_from_benchmark_rows_per_case_and_pass():
    kernels = _kernels_module()
    rows = [
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd",
         "backend": "triton", "ms": 1.0},
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd",
         "backend": "sdpa (auto)", "ms": 2.0},
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd",
         "backend": "sdpa flash", "ms": 0.5},  # a forced SDPA backend is not what the model's path runs
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd+bwd",
         "backend": "triton", "ms": 5.0},
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd+bwd",
         "backend": "sdpa (auto)", "ms": 4.0},
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd+bwd",
         "backend": "sdpa cudnn", "ms": 3.0},
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd+bwd",
         "backend": "sdpa efficient", "error": "refused"},
        {"op": "axial_attention time+rot", "case": "time-L16", "dtype": "bfloat16", "pass": "fwd+bwd",
         "backend": "torch.compile", "ms": 0.1},  # not a path the models take
        {"op": "joint_attention", "case": "L2048", "dtype": "bfloat16", "pass": "fwd", "backend": "sdpa (auto)",
         "ms": 3.0},
        {"op": "joint_attention", "case": "L2048", "dtype": "bfloat16", "pass": "fwd", "backend": "triton",
         "ms": 2.5},
        {"op": "joint_attention", "case": "L128", "dtype": "bfloat16", "pass": "fwd", "backend": "triton",
         "ms": 2.5},  # no SDPA row: no route
    ]
    prefs = kernels.preferences_from_rows(rows, "GPU")["GPU"]
    assert prefs["axial_attention@time-L16"] == {"bfloat16": {"fwd": "triton", "fwd+bwd": "sdpa"}}
    assert prefs["joint_attention@L2048"] == {"bfloat16": {"fwd": "triton"}}
    assert "joint_attention@L128" not in prefs
    assert prefs["axial_attention"]["bfloat16"] == ["triton"]  # the backend order is still recorded


def test_sdpa_wins_by_case_pass_dtype_and_nearest_length():
    prefs = {"joint_attention@L2048": {"bfloat16": {"fwd": "sdpa", "fwd+bwd": "triton"}},
             "joint_attention@L128": {"bfloat16": {"fwd": "triton", "fwd+bwd": "sdpa"}},
             "axial_attention@first-L17": {"bfloat16": {"fwd": "sdpa"}},
             "axial_attention@time-L16": {"bfloat16": {"fwd": "triton"}}}
    bf16 = torch.bfloat16
    assert dispatch.sdpa_wins(prefs, "joint_attention", "L2048", bf16, grad=False)
    assert not dispatch.sdpa_wins(prefs, "joint_attention", "L2048", bf16, grad=True)
    assert not dispatch.sdpa_wins(prefs, "joint_attention", "L2048", torch.float16, grad=False)  # unmeasured
    assert dispatch.sdpa_wins(prefs, "joint_attention", "L1500", bf16, grad=False)   # nearest: 2048
    assert dispatch.sdpa_wins(prefs, "joint_attention", "L100", bf16, grad=True)     # nearest: 128
    assert not dispatch.sdpa_wins(prefs, "joint_attention", "L100", bf16, grad=False)
    assert dispatch.sdpa_wins(prefs, "axial_attention", "first-L33", bf16, grad=False)
    assert not dispatch.sdpa_wins(prefs, "axial_attention", "sequence-L17", bf16, grad=False)  # other kind
    assert not dispatch.sdpa_wins(prefs, "axial_attention", "time-L16", bf16, grad=False)
    assert not dispatch.sdpa_wins(prefs, "axial_attention", "space", bf16, grad=False)
    assert not dispatch.sdpa_wins({}, "axial_attention", "time-L16", bf16, grad=False)
    assert dispatch._split_case("space-L1024") == ("space-", 1024) and dispatch._split_case("L7") == ("", 7)
    assert dispatch._split_case("time") == ("time", None)


def test_fused_never_reroutes_cpu_or_forced_calls(prefs_file):
    dispatch.save_preferences({"cpu": {"axial_attention@time-L4": {"float32": {"fwd": "sdpa", "fwd+bwd": "sdpa"}}}})
    x = torch.zeros(2, 4, 3 * 32)
    assert not dispatch.fused("axial_attention", x, case="time-L4")  # CPU auto: the reference, as before
    if dispatch.backend_unavailable_reason("triton", "cpu") is None:  # the interpreter
        with dispatch.use_backend("triton"):
            assert dispatch.fused("axial_attention", x, case="time-L4")


def _op_calls(dtype, empty):
    """One call per registered op, on its smallest valid input (or an empty one), in `dtype`."""
    from pvdm_fast import ops

    b = 0 if empty else 1
    f = lambda *shape: torch.randn(*shape).to(dtype)  # noqa: E731
    return {
        "group_norm_silu": lambda: ops.group_norm_silu(f(b, 4, 6), torch.ones(4), torch.zeros(4), num_groups=2),
        "triplane_sum": lambda: ops.triplane_sum(f(b, 2, 3, 4), f(b, 5, 3, 4), f(b, 5, 2, 4)),
        "axis_gather": lambda: ops.axis_gather(f(b, 2 * 3 * 4, 8), (2, 3, 4), "xy", torch.randn(8),
                                               torch.randn(3 * 8)),
    }


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
@pytest.mark.parametrize("kind", ["integer", "empty"])
def test_integer_and_empty_inputs_are_value_errors_on_every_backend(backend, kind):
    # auto on a CPU ran the reference in integer arithmetic (an int64 all-zero "GroupNorm"); empty
    # inputs gave a reshape error on the reference and a ZeroDivisionError in the Triton launchers.
    from pvdm_fast import ops

    if backend == "triton":
        pytest.importorskip("triton")
    calls = _op_calls(torch.int64 if kind == "integer" else torch.float32, empty=kind == "empty")
    with ops.use_backend(backend):
        for name, call in calls.items():
            with pytest.raises(ValueError, match="floating-point" if kind == "integer" else "empty input"):
                call()


def test_auto_passes_over_a_backend_beyond_its_shape_limits(monkeypatch):
    """The CUDA triplane/axis kernels take at most 1024 channels and 96 KB of backward sums: auto must
    pick the next backend for larger inputs (a training step used to fail in the launcher), and forcing
    the backend names the limit. A CUDA tensor is stood in for (no GPU here)."""
    from types import SimpleNamespace

    ag = importlib.import_module("pvdm_fast.ops.axis_gather")  # the package exports functions of these names
    td = importlib.import_module("pvdm_fast.ops.triplane_decode")

    monkeypatch.setattr(dispatch, "backend_unavailable_reason", lambda backend, device_type: None)
    monkeypatch.setattr(dispatch, "_gpu_name", lambda device: "stand-in GPU")
    monkeypatch.setattr(dispatch, "auto_order", lambda op, gpu, dtype: ("cuda", "triton"))
    x = SimpleNamespace(numel=lambda: 1, is_floating_point=lambda: True, dtype=torch.bfloat16,
                        device=SimpleNamespace(type="cuda", index=0))
    assert dispatch.select(td.SPEC, x, {"cuda": None}) == "cuda"
    assert dispatch.select(td.SPEC, x, {"cuda": "too wide"}) == "triton"
    with dispatch.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was requested but too wide"):
        dispatch.select(td.SPEC, x, {"cuda": "too wide"})

    planes = lambda t, h, w, c, dtype: (torch.empty(1, h, w, c, dtype=dtype), torch.empty(1, t, w, c, dtype=dtype))  # noqa: E731
    assert td._cuda_limit(*planes(16, 32, 32, 1024, torch.bfloat16)) is None
    assert "at most 1024 channels, got C=1025" in td._cuda_limit(*planes(16, 32, 32, 1025, torch.bfloat16))
    assert td._cuda_limit(*planes(16, 96, 96, 8, torch.bfloat16)) is None  # 3072 rows x 32 B = 96 KB
    assert td._cuda_limit(*planes(16, 96, 96, 8, torch.float32)) is None  # 16 B rows of float32 x4: 48 KB
    assert "needs 99328 B" in td._cuda_limit(*planes(16, 97, 97, 8, torch.float16))

    seen = []
    monkeypatch.setattr(dispatch, "select", lambda spec, x, limits=None: seen.append(limits) or "reference")
    tokens = torch.randn(1, 2 * 2 * 3, 1030)
    ag.axis_gather(tokens, (2, 2, 3), "xy", torch.zeros(1030), torch.zeros(3, 1030))
    assert "at most 1024 channels, got C=1030" in seen[-1]["cuda"]
    ag.axis_gather(tokens[..., :16], (2, 2, 3), "xy", torch.zeros(16), torch.zeros(3, 16))
    assert seen[-1]["cuda"] is None
