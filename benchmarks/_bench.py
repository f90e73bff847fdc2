"""Shared helpers for the benchmark scripts: timing, copy bandwidth, tables and JSON.

Benchmarks are scripts, not tests: they print a table and, with `--json PATH`, write the rows with
the device and commit they were measured on. Numbers come from `triton.testing.do_bench` (median).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
from typing import Callable, Iterable

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=pathlib.Path, default=None, help="write the rows to this JSON file")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (smoke run)")
    return p


# Which competitors a run times: "all"; "fast" leaves out torch.compile, whose compiling takes minutes on a
# fresh machine; "compiled" times only torch.compile (kernels.py runs "fast" first, then "compiled", and
# writes its JSON after each step, so a run cut short keeps the rows that decide `auto`).
PHASE = ["all"]


def measured(name: str) -> bool:
    """Whether the current phase times the competitor called `name`."""
    if PHASE[0] == "all":
        return True
    return (name == "torch.compile") == (PHASE[0] == "compiled")


def require_gpu(script: str) -> bool:
    """True when a CUDA device is visible; otherwise prints why the script does nothing."""
    if torch.cuda.is_available():
        return True
    print(f"{script}: no CUDA device visible; kernel benchmarks need a GPU (nothing measured).")
    return False


def do_bench_ms(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median time of `fn` in milliseconds (CUDA events, L2 flushed between runs)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def host_ms(fn: Callable[[], object], calls: int = 10) -> float:
    """Host time (Python, dispatch, autograd, launches) of one call, in ms, measured while the GPU is held
    busy so that no call waits for it. do_bench's events span max(GPU time, about this minus the L2 flush):
    a row whose `ms` is not well above it timed the CPU, not the kernels."""
    import time

    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of spinning: the calls below only enqueue
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e3
    torch.cuda.synchronize()
    return host


_COPY_GBS: dict[int, float] = {}


def copy_bandwidth_gbs(device: torch.device | None = None, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second), in GB/s.

    This is the practical ceiling for memory-bound kernels on the device, measured rather than
    taken from a data sheet.
    """
    device = device or torch.device("cuda", torch.cuda.current_device())
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _COPY_GBS:
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        ms = do_bench_ms(lambda: dst.copy_(src))
        _COPY_GBS[key] = 2 * nbytes / (ms * 1e-3) / 1e9
        del src, dst
    return _COPY_GBS[key]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except Exception:
        return os.environ.get("PVDM_COMMIT", "unknown")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def print_table(rows: Iterable[dict], columns: list[str] | None = None, file=sys.stdout) -> None:
    rows = list(rows)
    if not rows:
        print("(no rows)", file=file)
        return
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)


def write_json(path: pathlib.Path | str | None, rows: list[dict], **extra) -> None:
    """Write `{device, commit, torch, date, rows, ...}` atomically; no-op when path is None."""
    if path is None:
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "device": device_name(),
        "commit": git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "rows": rows,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
