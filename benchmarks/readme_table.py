"""Regenerate the README's performance table, and the backend preferences shipped with the package,
from the committed results files.

    python benchmarks/readme_table.py   # rewrites the block between the perf-table markers and
                                        # pvdm_fast/ops/measured_prefs.json

Only numbers in benchmarks/results/*.json (written by gpu_check.sh, with device and commit) appear.
The shipped preferences (fastest backend per op and dtype, and the attention cases SDPA won, per GPU
model) let `auto` follow the project's measurements on those GPUs without a local benchmark run.
"""
from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED_PREFS = ROOT / "pvdm_fast" / "ops" / "measured_prefs.json"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def render(results: list[dict]) -> str:
    if not results:
        return ("No GPU results are committed yet. On a GPU, `bash benchmarks/gpu_check.sh` writes "
                "`benchmarks/results/<gpu>-<commit>.json`; then run `python benchmarks/readme_table.py`.")
    lines = []
    for doc in results:
        counts = doc.get("gpu_tests", {}).get("counts", {})
        lines.append(f"**{doc.get('device')}**, commit `{doc.get('commit')}`, torch "
                     f"{doc.get('versions', {}).get('torch')}: GPU tests {counts}")
        lines.append("")
        e2e = doc.get("benchmarks", {}).get("end_to_end", {}).get("rows", [])
        if e2e:
            lines += ["| measurement | backend | batch | s/step or s/clip | clips or samples/s | peak GiB (per clip) "
                      "| largest batch in 24 GB | MFU |", "|---|---|---|---|---|---|---|---|"]
            for r in e2e:
                if "error" in r:
                    continue
                what = r["what"] + (f" {r['sampler']} {r['steps']} steps" if "sampler" in r else "")
                what += " (CUDA graph)" if r.get("cuda_graph") else ""
                lines.append("| " + " | ".join(_fmt(v) for v in (
                    what, r.get("backend"), r.get("batch"),
                    r.get("s_per_step", r.get("s_per_clip", r.get("s_total"))),
                    r.get("clips_per_s", r.get("samples_per_s")),
                    r.get("peak_gib_per_clip", r.get("peak_gib")), r.get("largest_batch"), r.get("mfu"))) + " |")
            lines.append("")
        kernels = doc.get("benchmarks", {}).get("kernels", {})
        kern = kernels.get("rows", [])
        if kern:
            lines += ["| kernel | shape | dtype | pass | backend | ms | GB/s | % of copy bandwidth | TFLOP/s "
                      "| speed-up vs best SDPA |", "|---|---|---|---|---|---|---|---|---|---|"]
            for r in kern:
                if "ms" in r:
                    lines.append("| " + " | ".join(_fmt(r.get(k)) for k in (
                        "op", "shape", "dtype", "pass", "backend", "ms", "GB/s", "pct_of_copy_bw", "TFLOP/s",
                        "speedup_vs_best_sdpa")) + " |")
            lines.append("")
        routes = [f"{key} ({dtype} {pass_})"
                  for prefs in (kernels.get("backend_preferences") or {}).values()
                  for key, by_dtype in sorted(prefs.items()) if "@" in key
                  for dtype, by_pass in sorted(by_dtype.items()) for pass_, winner in sorted(by_pass.items())
                  if winner == "sdpa"]
        if kern:
            lines.append("Attention cases where SDPA (copies included) beat the kernel, so `auto` runs the "
                         "model's SDPA path: " + (", ".join(routes) if routes else "none") + ".")
            lines.append("")
    return "\n".join(lines).rstrip()


def load_results(folder: pathlib.Path) -> list[dict]:
    """The newest results file per device."""
    newest: dict[str, dict] = {}
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        key = doc.get("device", path.stem)
        # file mtimes mean nothing in a checkout: the date the run recorded decides (mtime breaks ties)
        dates = [str(b.get("date", "")) for b in doc.get("benchmarks", {}).values() if isinstance(b, dict)]
        when = (max(dates, default=""), path.stat().st_mtime)
        if key not in newest or when >= newest[key]["_when"]:
            newest[key] = {**doc, "_when": when}
    return [{k: v for k, v in doc.items() if k != "_when"} for doc in newest.values()]


def update_readme(readme: pathlib.Path, table: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: the markers {START} / {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def shipped_preferences(results: list[dict]) -> dict:
    """{gpu: {op or op@case: {dtype: ...}}} from the kernel benchmarks of the results (newest per device)."""
    from pvdm_fast.ops.dispatch import merge_preferences

    merged: dict = {}
    for doc in results:
        prefs = doc.get("benchmarks", {}).get("kernels", {}).get("backend_preferences")
        if isinstance(prefs, dict):
            merged = merge_preferences(merged, prefs)
    return merged


def write_shipped_preferences(prefs: dict, path: pathlib.Path) -> bool:
    """Write `prefs` (when there are any); True when the file was written."""
    from pvdm_fast._atomic import atomic_write

    if not prefs:
        return False
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(prefs, indent=1, sort_keys=True) + "\n"))
    return True


def main() -> int:
    results = load_results(ROOT / "benchmarks" / "results")
    update_readme(ROOT / "README.md", render(results))
    print("README.md performance table updated")
    if write_shipped_preferences(shipped_preferences(results), SHIPPED_PREFS):
        print(f"{SHIPPED_PREFS.relative_to(ROOT)} updated: commit it with the results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
