"""What this installation can do: versions, the compiled extension, GPUs and per-op backends."""

from __future__ import annotations

import platform

import torch

import pvdm_fast
from pvdm_fast.ops import _ext, dispatch


def collect() -> dict:
    """Everything `pvdm info` prints, as a dict (also written into benchmark results)."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count})
    triton_version = getattr(_ext.triton, "__version__", None) if _ext.triton is not None else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "pvdm_fast": pvdm_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "triton_error": _ext.TRITON_ERROR,
        "triton_interpreter": _ext.triton_interpreted(),
        "build_info": _ext.build_info(),
        "gpus": gpus,
        "forced_backend": dispatch.forced_backend(),
        "ops": dispatch.describe(device_type=device, dtype=torch.bfloat16),
        "sdpa_routes": _sdpa_routes(),
    }


def _sdpa_routes() -> dict:
    """The measured attention cases of this GPU: {"op@case": {dtype: {pass: winner}}}."""
    if not torch.cuda.is_available():
        return {}
    measured = dispatch._dig(dispatch.load_preferences(), torch.cuda.get_device_name())
    if not isinstance(measured, dict):
        return {}
    return {k: {d: p for d, p in v.items() if isinstance(p, dict)} for k, v in measured.items()
            if "@" in str(k) and isinstance(v, dict)}


def format_info(info: dict) -> str:
    lines = [f"pvdm_fast {info['pvdm_fast']}  (python {info['python']})",
             f"torch {info['torch']}  (CUDA {info['torch_cuda'] or 'none'})",
             f"triton {info['triton'] or 'not available: ' + str(info['triton_error'])}"
             + ("  [interpreter]" if info["triton_interpreter"] else "")]
    bi = info["build_info"]
    lines.append("_C: " + ", ".join(f"{k}={v}" for k, v in bi.items()))
    if info["gpus"]:
        for g in info["gpus"]:
            lines.append(f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, sm_{g['capability']}, {g['sms']} SMs")
    else:
        lines.append("GPUs: none visible")
    lines.append(f"backend: {info['forced_backend'] or 'auto'} (PVDM_BACKEND / use_backend)")
    for row in info["ops"]:
        lines.append(f"op {row['op']}: auto -> {row['auto']} (bf16)")
        for backend, status in row["backends"].items():
            lines.append(f"    {backend:9s} {status}")
    routes = info.get("sdpa_routes") or {}
    if routes:
        lines.append(f"attention cases measured on this GPU ({dispatch.preferences_path()}):")
        for key, by_dtype in sorted(routes.items()):
            for dtype, by_pass in sorted(by_dtype.items()):
                lines.append(f"    {key} {dtype}: " + ", ".join(f"{p} -> {w}" for p, w in sorted(by_pass.items())))
    return "\n".join(lines)
