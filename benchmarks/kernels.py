"""Kernel micro-benchmarks: every fused op against torch eager and torch.compile of its reference.

    python benchmarks/kernels.py [--quick] [--json PATH] [--write-prefs] [--no-compile]

Memory-bound ops report GB/s (bytes that must move: inputs read once, outputs written once) and the
percentage of the device's measured copy bandwidth; attention reports TFLOP/s. This file holds the
GroupNorm+SiLU entry; every `benchmarks/kernels_<op>.py` module's `rows()` is added to the table.
The fused kernels and SDPA of every op are timed before any torch.compile row (compiling takes minutes
on a fresh machine), and the JSON (and the preferences) are rewritten after each op, so a run stopped
early keeps what it measured ("complete": false).
"""
from __future__ import annotations

import importlib
import math
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _bench  # noqa: E402


def _unet_gn_cases(quick: bool) -> list[dict]:
    """The UNet's real shapes: batch 16, planes of the 16x256x256 latent grid at two levels."""
    cases = [
        dict(batch=16, channels=256, planes=[(32, 32), (16, 32), (16, 32)]),
        dict(batch=16, channels=1024, planes=[(4, 4), (2, 4), (2, 4)]),
    ]
    return cases[:1] if quick else cases


def group_norm_silu_rows(quick: bool = False) -> list[dict]:
    from pvdm_fast import ops
    from pvdm_fast.ops.group_norm_silu import group_norm_silu_reference

    dev = torch.device("cuda")
    copy_gbs = _bench.copy_bandwidth_gbs(dev)
    dtype = torch.bfloat16
    rows = []
    for case in _unet_gn_cases(quick):
        b, c = case["batch"], case["channels"]
        segments = [r * k for r, k in case["planes"]]
        length = sum(segments)
        x = torch.randn(b, c, length, device=dev, dtype=dtype)
        w = torch.randn(c, device=dev, dtype=dtype)
        bias = torch.randn(c, device=dev, dtype=dtype)
        scale = torch.randn(b, c, device=dev, dtype=dtype)
        shift = torch.randn(b, c, device=dev, dtype=dtype)
        dy = torch.randn_like(x)
        elt = x.element_size()

        def ref(xx, ww, bb, sc, sh):
            return group_norm_silu_reference(xx, ww, bb, sc, sh, segments)[0]

        compiled = torch.compile(ref, dynamic=False) if _bench.measured("torch.compile") else None

        def fused_with(backend):
            def run(xx, ww, bb, sc, sh):
                with ops.use_backend(backend):
                    return ops.group_norm_silu(xx, ww, bb, scale=sc, shift=sh, segments=segments)
            return run

        impls = {"torch eager": ref, "torch.compile": compiled}
        status = next(r for r in ops.describe() if r["op"] == "group_norm_silu")["backends"]
        for backend in ("triton", "cuda"):
            if status.get(backend) == "available":
                impls[backend] = fused_with(backend)

        # fwd moves x in + y out; fwd+bwd adds dy in, x re-read, dx out (params are negligible)
        for pass_, nbytes in (("fwd", 2 * x.numel() * elt), ("fwd+bwd", 5 * x.numel() * elt)):
            for name, fn in impls.items():
                if not _bench.measured(name):
                    continue
                if pass_ == "fwd":
                    def call(fn=fn):
                        return fn(x, w, bias, scale, shift)
                else:
                    xg = x.detach().requires_grad_(True)

                    def call(fn=fn, xg=xg):  # autograd.grad: no accumulation into xg.grad between calls
                        torch.autograd.grad(fn(xg, w, bias, scale, shift), xg, dy)
                try:
                    ms = _bench.do_bench_ms(call)
                except Exception as exc:  # a backend failing is a result, not a crash of the table
                    rows.append({"op": "group_norm_silu", "shape": f"{b}x{c}x{segments}", "dtype": "bfloat16",
                                 "pass": pass_, "backend": name, "error": f"{type(exc).__name__}: {exc}"[:120]})
                    continue
                gbs = nbytes / (ms * 1e-3) / 1e9
                rows.append({"op": "group_norm_silu", "shape": f"{b}x{c}x{segments}", "dtype": "bfloat16",
                             "pass": pass_, "backend": name, "ms": ms, "GB/s": gbs,
                             "pct_of_copy_bw": 100 * gbs / copy_gbs})
    return rows


def all_rows(quick: bool = False, done=None) -> list[dict]:
    """Every op's rows; `done(rows so far)` is called after each op. In the "all" phase the fused kernels
    and SDPA of every op are timed first ("fast"), torch.compile afterwards ("compiled")."""
    phases = ["fast", "compiled"] if _bench.PHASE[0] == "all" else [_bench.PHASE[0]]
    rows: list[dict] = []
    here = pathlib.Path(__file__).resolve().parent
    try:
        for phase in phases:
            _bench.PHASE[0] = phase
            ops = [("group_norm_silu", group_norm_silu_rows)] + [
                (path.stem, importlib.import_module(path.stem).rows) for path in sorted(here.glob("kernels_*.py"))]
            if phase == "compiled":  # issue 9's goal is against torch.compile: its rows first, if time runs out
                ops.sort(key=lambda op: op[0] != "kernels_triplane")
            for name, make in ops:
                try:
                    rows.extend(make(quick))
                except Exception as exc:  # report and continue: one broken op must not hide the others
                    rows.append(dict(op=name, phase=phase, error=f"{type(exc).__name__}: {exc}"[:200]))
                if done is not None:
                    done(rows)
    finally:
        _bench.PHASE[0] = "all" if len(phases) > 1 else phases[0]
    return rows


def _op_name(row: dict, names: list[str]) -> str | None:
    """The registered op a row measures ("axial_attention time+rot" -> "axial_attention"); names longest first."""
    return next((n for n in names if str(row.get("op", "")).startswith(n)), None)


def preferences_from_rows(rows: list[dict], gpu: str) -> dict:
    """{gpu: {op: {dtype: [fused backends, fastest first]}}} from the measured rows: per op and dtype,
    the total fwd+bwd time over all shapes (fwd where no backward was timed)."""
    from pvdm_fast.ops import dispatch

    names = sorted(dispatch.REGISTRY, key=len, reverse=True)
    totals: dict = {}
    for r in rows:
        if "ms" not in r or r.get("backend") not in dispatch.AUTO_ORDER:
            continue
        op = _op_name(r, names)
        if op is None:
            continue
        key = (op, r.get("dtype"))
        passes = totals.setdefault(key, {})
        passes.setdefault(r.get("pass", "fwd"), {}).setdefault(r["backend"], []).append(r["ms"])
    prefs: dict = {}
    for (op, dtype), passes in totals.items():
        timed = passes.get("fwd+bwd") or passes.get("fwd") or {}
        if timed:
            # a backend that failed (or was not timed) on some shape would get a smaller sum: backends timed
            # on every shape come first, by total time; the others after them
            most = max(len(v) for v in timed.values())
            order = sorted(timed, key=lambda b: (len(timed[b]) < most, sum(timed[b])))
            prefs.setdefault(gpu, {}).setdefault(op, {})[dtype] = order
    for key, by_dtype in sdpa_routes(rows, names).items():
        prefs.setdefault(gpu, {})[key] = by_dtype
    return prefs


def sdpa_routes(rows: list[dict], names: list[str]) -> dict:
    """{"op@case": {dtype: {pass: "sdpa" or the fused backend}}}: per attention case (rows with a "case"
    key) and pass, whether the best SDPA backend (copies included) or the fastest fused backend was
    faster. Models ask this through `ops.fused(op, x, case=...)` and take their SDPA path where SDPA won."""
    from pvdm_fast.ops import dispatch

    best: dict = {}
    for r in rows:
        if "ms" not in r or "case" not in r:
            continue
        op = _op_name(r, names)
        backend = str(r.get("backend", ""))
        # the models' SDPA paths run SDPA with its own backend choice: only that row can send a case there
        kind = "sdpa" if backend == "sdpa (auto)" else backend if backend in dispatch.AUTO_ORDER else None
        if op is None or kind is None:
            continue
        slot = best.setdefault((f"{op}@{r['case']}", r.get("dtype"), r.get("pass", "fwd")), {})
        if r["ms"] < slot.get(kind, math.inf):
            slot[kind] = r["ms"]
    routes: dict = {}
    for (key, dtype, pass_), times in best.items():
        fused = {k: v for k, v in times.items() if k != "sdpa"}
        if fused and "sdpa" in times:
            winner = min(times, key=times.get)
            routes.setdefault(key, {}).setdefault(dtype, {})[pass_] = winner
    return routes


def main(argv=None) -> int:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--write-prefs", action="store_true",
                   help="record the fastest backend per op and dtype for `auto` (see pvdm_fast.ops.dispatch)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows (minutes of compiling)")
    args = p.parse_args(argv)
    if not _bench.require_gpu("kernels.py"):
        return 0
    if args.no_compile:
        _bench.PHASE[0] = "fast"
    # every case compiles its own graphs (no_grad fwd and fwd+bwd) on code objects the cases share (the
    # per-case lambdas of one loop): past the default limit of 8, Dynamo would silently run them eagerly
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    torch._dynamo.config.fail_on_recompile_limit_hit = True

    def save(rows: list[dict], final: bool = False) -> dict:
        prefs = preferences_from_rows(rows, _bench.device_name())
        if args.write_prefs and prefs:
            from pvdm_fast.ops import dispatch

            path = dispatch.save_preferences(prefs)
            if final:
                print(f"backend preferences written to {path}: {prefs}")
        _bench.write_json(args.json, rows, copy_bandwidth_gbs=_bench.copy_bandwidth_gbs(), backend_preferences=prefs,
                          complete=final)
        return prefs

    rows = all_rows(args.quick, done=save)
    print(f"device: {_bench.device_name()}   measured copy bandwidth: "
          f"{_bench.copy_bandwidth_gbs():.0f} GB/s")
    _bench.print_table(rows)
    save(rows, final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
