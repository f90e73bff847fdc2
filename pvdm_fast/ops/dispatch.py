"""Backend selection for the fused ops.

Every op registers which backends implement it and for which dtypes. `auto` picks, for CUDA tensors,
the fastest of cuda / triton that is built and supports the input, else the reference; CPU tensors
always get the reference. "Fastest" is measured: `benchmarks/kernels.py` times every backend on the
device and records the winner per (GPU model, op, dtype) in a preferences file (PVDM_BACKEND_PREFS,
default ~/.cache/pvdm_fast/backend_prefs.json); without a measurement the order is cuda > triton. `PVDM_BACKEND=<name>` or `use_backend(name)` forces one backend, and
forcing one that cannot run the input raises instead of silently falling back. The same file records,
per attention case, whether SDPA (with the copies it needs) beat the kernel; `fused(op, x, case)` then
sends that case to the model's SDPA path (see `sdpa_wins`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from dataclasses import dataclass, field

import torch

from pvdm_fast._atomic import atomic_write
from pvdm_fast.ops import _ext

BACKENDS = ("reference", "triton", "cuda")
AUTO_ORDER = ("cuda", "triton")


def _parse(name: str | None) -> str | None:
    if name is None or name.strip().lower() in ("", "auto"):
        return None
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of auto, {', '.join(BACKENDS)}")
    return name


# The forced backend (None = auto). A plain module global so torch.compile can guard on it.
_forced: str | None = None
_env_error: str | None = None
try:
    _forced = _parse(os.environ.get("PVDM_BACKEND"))
except ValueError as exc:
    _env_error = f"PVDM_BACKEND: {exc}"


# Ops the forced backend applies to (None = every op); the others stay on auto.
_forced_ops: frozenset | None = None


@contextlib.contextmanager
def use_backend(name: str, ops=None):
    """Force `name` ('auto', 'reference', 'triton' or 'cuda') inside the block, for every op or only
    for the op names in `ops` (e.g. to test or time one kernel inside a whole model)."""
    global _forced, _forced_ops
    if ops is not None:
        ops = frozenset([ops] if isinstance(ops, str) else ops)
        unknown = sorted(ops - set(REGISTRY))
        if unknown:
            raise ValueError(f"use_backend: unknown op(s) {unknown}; known: {sorted(REGISTRY)}")
    previous = (_forced, _forced_ops)
    _forced, _forced_ops = _parse(name), ops
    try:
        yield
    finally:
        _forced, _forced_ops = previous


def forced_backend(op: str | None = None) -> str | None:
    """The backend forced for `op` (None: auto)."""
    if _env_error is not None:
        raise ValueError(_env_error)
    if op is not None and _forced_ops is not None and op not in _forced_ops:
        return None
    return _forced


_TRITON_OK = _ext.triton is not None
_CUDA_OK = _ext.cuda_kernels_built()


def backend_unavailable_reason(backend: str, device_type: str) -> str | None:
    """Why `backend` cannot run on `device_type` in this installation, or None when it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not _TRITON_OK:
            return f"Triton is not importable ({_ext.TRITON_ERROR}); pip install triton"
        if device_type != "cuda" and not _ext.triton_interpreted():
            return "Triton needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)"
        return None
    if backend == "cuda":
        if _ext._C is None:
            return f"pvdm_fast._C did not load ({_ext.C_ERROR})"
        if not _CUDA_OK:
            return "pvdm_fast._C was built without CUDA kernels (reinstall with PVDM_CUDA=ON and nvcc on PATH)"
        if device_type != "cuda":
            return "the CUDA backend needs CUDA tensors"
        return None
    raise ValueError(f"unknown backend {backend!r}")


@dataclass(frozen=True)
class OpSpec:
    """Which dtypes each backend of one op accepts."""

    name: str
    dtypes: dict = field(default_factory=dict)  # backend -> tuple of torch dtypes

    def reason(self, backend: str, x: torch.Tensor) -> str | None:
        if backend not in self.dtypes:
            return f"{self.name} has no {backend} implementation"
        why = backend_unavailable_reason(backend, x.device.type)
        if why is None and x.dtype not in self.dtypes[backend]:
            kinds = ", ".join(str(d).replace("torch.", "") for d in self.dtypes[backend])
            why = f"the {backend} backend supports {kinds}, not {str(x.dtype).replace('torch.', '')}"
        return why


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    REGISTRY[spec.name] = spec
    return spec


# ---- measured preferences: {gpu name: {op: {dtype name: [backends, fastest first]},
#                                        "op@case": {dtype name: {pass: "sdpa" or backend}}}}

def preferences_path() -> pathlib.Path:
    env = os.environ.get("PVDM_BACKEND_PREFS")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "pvdm_fast" / "backend_prefs.json"


_prefs: dict | None = None
_device_names: dict[int, str] = {}
# Measurements shipped with the package (benchmarks/readme_table.py writes it from the committed
# benchmarks/results/*.json of the project's GPU runs); the user's own file overrides it.
SHIPPED_PREFS = pathlib.Path(__file__).with_name("measured_prefs.json")


def _read_json_dict(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def merge_preferences(base: dict, measured: dict) -> dict:
    """`base` updated with `measured` per (gpu, op, dtype); levels of the wrong shape are replaced."""
    out = {gpu: {op: dict(v) for op, v in ops.items() if isinstance(v, dict)}
           for gpu, ops in base.items() if isinstance(ops, dict)}
    for gpu, ops in measured.items():
        if not isinstance(ops, dict):
            continue
        for op, by_dtype in ops.items():
            if isinstance(by_dtype, dict):
                out.setdefault(gpu, {}).setdefault(op, {}).update(by_dtype)
    return out


def load_preferences(path: pathlib.Path | None = None) -> dict:
    """The shipped measurements overlaid with the user's preferences file, read once; a missing or
    unreadable file means no measurements from it."""
    global _prefs
    if _prefs is None or path is not None:
        _prefs = merge_preferences(_read_json_dict(SHIPPED_PREFS), _read_json_dict(path or preferences_path()))
    return _prefs


def save_preferences(measured: dict, path: pathlib.Path | None = None) -> pathlib.Path:
    """Merge `measured` ({gpu: {op: {dtype: order}}}) into the user's file, atomically; returns its path."""
    global _prefs
    path = path or preferences_path()
    current = merge_preferences(_read_json_dict(path), measured)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(current, indent=1, sort_keys=True)))
    _prefs = merge_preferences(_read_json_dict(SHIPPED_PREFS), current)
    return path


def _dig(tree, *keys):
    """tree[k1][k2]...; None where a level is missing or not a dict (a hand-edited or foreign file)."""
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def auto_order(op: str, gpu: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The backends `auto` tries for `op` on this GPU model and dtype, fastest measured first."""
    measured = _dig(load_preferences(), gpu, op, str(dtype).replace("torch.", ""))
    if not isinstance(measured, list) or not measured:
        return AUTO_ORDER
    order = [b for b in measured if b in AUTO_ORDER]
    return tuple(order + [b for b in AUTO_ORDER if b not in order])


def _gpu_name(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _device_names:
        _device_names[index] = torch.cuda.get_device_name(index)
    return _device_names[index]


def fused(op: str, x: torch.Tensor, case: str | None = None) -> bool:
    """Whether `op` would run a fused kernel (not the PyTorch reference) on `x`. Model code uses this
    where its own plain path (e.g. SDPA) beats the op's reference, which is written for clarity.

    `case` names the kind of call and its length (e.g. "time-L16" or "space-L1024" attention, "L2048"
    for a joint attention over 2048 tokens): where the kernel benchmark measured SDPA (with the copies it needs) faster than
    the fused kernel for that case on this GPU and dtype, auto answers False so the model takes its
    SDPA path. A forced backend (PVDM_BACKEND, use_backend) is never rerouted."""
    if select(REGISTRY[op], x) == "reference":
        return False
    if case is None or x.device.type != "cuda" or forced_backend(op) is not None:
        return True
    grad = torch.is_grad_enabled() and x.requires_grad
    return not sdpa_wins(_dig(load_preferences(), _gpu_name(x.device)) or {}, op, case, x.dtype, grad)


def _split_case(case: str) -> tuple[str, int | None]:
    """"space-L1024" -> ("space-", 1024); a case without a trailing length -> (case, None)."""
    head, sep, tail = case.rpartition("L")
    if sep and tail.isdigit() and int(tail) > 0:
        return head, int(tail)
    return case, None


def sdpa_wins(gpu_prefs: dict, op: str, case: str, dtype: torch.dtype, grad: bool) -> bool:
    """Whether the measurements for one GPU ({"op@case": {dtype: {"fwd": winner, "fwd+bwd": winner}}},
    written by benchmarks/kernels.py) say SDPA beats the fused kernel for this call. "fwd+bwd" decides
    when a backward will follow, "fwd" otherwise. A case "<kind>L<length>" without its own measurement
    takes the measured length of the same kind nearest on a log scale; other unmeasured cases keep the
    kernel."""
    if not isinstance(gpu_prefs, dict):
        return False
    measured = {k.split("@", 1)[1]: v for k, v in gpu_prefs.items()
                if isinstance(k, str) and k.startswith(op + "@") and isinstance(v, dict)}
    if case not in measured:
        kind, length = _split_case(case)
        near = {c: n for c, (k, n) in ((c, _split_case(c)) for c in measured) if k == kind and n is not None}
        if length is None or not near:
            return False
        case = min(near, key=lambda c: (abs(math.log2(near[c] / length)), near[c]))
    by_pass = measured[case].get(str(dtype).replace("torch.", ""))
    if not isinstance(by_pass, dict):
        return False
    return by_pass.get("fwd+bwd" if grad else "fwd") == "sdpa"


def select(spec: OpSpec, x: torch.Tensor, limits: dict[str, str | None] | None = None) -> str:
    """The backend that runs `spec` on `x` (see module docstring). `limits`: per backend, why this call's
    shape is beyond it (None: within); auto passes over such a backend, a forced one raises."""
    if x.numel() == 0:  # every backend would fail differently (a reshape error, a division by zero)
        raise ValueError(f"{spec.name}: empty input of shape {tuple(x.shape)}; every dimension must be positive")
    if not x.is_floating_point():  # the reference would compute in integers and return garbage
        raise ValueError(f"{spec.name}: input must be a floating-point tensor, got {x.dtype}")
    limits = limits or {}
    forced = forced_backend(spec.name)
    if forced is not None:
        why = spec.reason(forced, x) or limits.get(forced)
        if why is not None:
            raise RuntimeError(f"{spec.name}: backend {forced!r} was requested but {why}")
        return forced
    if x.device.type == "cuda":
        for backend in auto_order(spec.name, _gpu_name(x.device), x.dtype):
            if spec.reason(backend, x) is None and limits.get(backend) is None:
                return backend
    return "reference"


def describe(device_type: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Per op: each backend's availability on `device_type`, and what auto picks for `dtype`."""
    rows = []
    for spec in REGISTRY.values():
        status = {}
        for backend in BACKENDS:
            if backend not in spec.dtypes:
                status[backend] = "not implemented"
                continue
            why = backend_unavailable_reason(backend, device_type)
            status[backend] = "available" if why is None else f"unavailable: {why}"
        auto = "reference"
        if device_type == "cuda":
            order = auto_order(spec.name, torch.cuda.get_device_name(), dtype) if torch.cuda.is_available() \
                else AUTO_ORDER
            auto = next((b for b in order if status.get(b) == "available" and dtype in spec.dtypes[b]),
                        "reference")
        rows.append({"op": spec.name, "backends": status, "auto": auto})
    return rows
