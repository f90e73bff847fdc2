"""Merge one gpu_check.sh run (build info, GPU test outcomes, benchmark JSONs) into one results file:
benchmarks/results/<gpu>-<commit>.json (and $OUT/ when set)."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import xml.etree.ElementTree as ET


def _tests(path: pathlib.Path) -> dict:
    if not path.exists():
        return {"error": "no junit report (tests did not run)"}
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        detail = None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (node.get("message") or "")[:300]
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), **({"detail": detail} if detail else {})})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "cases": cases}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=pathlib.Path, required=True)
    p.add_argument("--root", type=pathlib.Path, required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--build-rc", type=int, default=0)
    p.add_argument("--test-rc", type=int, default=0)
    p.add_argument("--bench-rc", type=int, default=0)
    p.add_argument("--sanitizer-rc", type=int, default=0)
    a = p.parse_args()

    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    doc = {
        "device": gpu,
        "commit": a.commit,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "triton": triton_version},
        "build_info": json.loads((a.work / "build_info.json").read_text())
        if (a.work / "build_info.json").exists() else None,
        "exit_codes": {"build": a.build_rc, "gpu_tests": a.test_rc, "kernel_benchmarks": a.bench_rc,
                       "compute_sanitizer": a.sanitizer_rc},
        "sanitizer_logs": {p.stem: p.read_text()[-2000:] for p in sorted(a.work.glob("sanitizer_*.log"))},
        "gpu_tests": _tests(a.work / "gpu_tests.xml"),
        "benchmarks": {},
    }
    for path in sorted(a.work.glob("*.json")):
        if path.name != "build_info.json":
            doc["benchmarks"][path.stem] = json.loads(path.read_text())
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    out = a.root / "benchmarks" / "results" / f"{slug}-{a.commit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"results: {out}")
    if os.environ.get("OUT"):
        shutil.copy(out, pathlib.Path(os.environ["OUT"]) / out.name)
    counts = doc["gpu_tests"].get("counts", {})
    print(f"gpu tests: {counts}")
    return 0 if not counts.get("failed") and not counts.get("error") else 1


if __name__ == "__main__":
    raise SystemExit(main())
