"""Triton kernels compiled for real GPU targets without a GPU: every launch the GPU tests and benchmarks make.

    python benchmarks/triton_compile.py [--quick] [--arch 90 --arch 80] [--cases tests,bench,models] [--json PATH]

The CPU test suite runs the Triton kernels in the interpreter, which accepts programs the GPU
compiler rejects (dot shapes and dtypes, layouts) and knows nothing of registers or shared memory.
This script drives the public ops with `backend="triton"` on CPU tensors exactly as the GPU-marked
tests and the kernel benchmarks call them (same shapes, dtypes and options), records each kernel
launch instead of running it, specialises it as Triton's launcher would (argument types, 16-byte
alignment, constants), and compiles it to a cubin for each target (sm_90 = H100/H200 by default) with
Triton's own LLVM and ptxas. Per distinct kernel variant it reports registers, stack frame and local
memory bytes (spilled registers), dynamic shared memory against the target's per-block limit, resident
blocks per multiprocessor, the launch grid against CUDA's grid limits, and compile time. Exit status 1
when any variant fails to compile or would not launch (shared memory or grid over the limit); spills
and low occupancy are reported, not failed.
"""
from __future__ import annotations

import os

# The kernels must be built as JIT functions (not interpreted) and the launchers must choose their GPU
# tile configurations: both are decided from this variable when the modules are imported.
os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime import jit as triton_jit  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _bench  # noqa: E402

# Per-block dynamic shared memory a kernel may opt into, and per multiprocessor: shared memory, threads,
# resident blocks (CUDA programming guide, compute capabilities table), in bytes; 64K registers everywhere.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
SM_SHARED = {80: 167936, 86: 102400, 89: 102400, 90: 233472}
SM_THREADS = {80: 2048, 86: 1536, 89: 1536, 90: 2048}
SM_BLOCKS = {80: 32, 86: 16, 89: 24, 90: 32}
GRID_LIMIT = (2**31 - 1, 65535, 65535)
ARCH_NAMES = {80: "A100", 86: "RTX 30xx / A40", 89: "L4 / L40 / RTX 40xx", 90: "H100 / H200"}


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch: the JIT function, its arguments as the launcher passed them, the grid."""

    kernel: triton_jit.JITFunction
    args: tuple
    kwargs: dict
    grid: tuple
    source: str  # which workload made it


_RECORDED: list[Launch] = []
_SOURCE = ["?"]


class _Pointer:
    """What Triton's specialisation reads of a tensor argument (its dtype and address, for the 16-byte
    alignment attribute), kept instead of the tensor so recording a model does not hold its memory."""

    def __init__(self, t: torch.Tensor):
        self.dtype, self._ptr = t.dtype, t.data_ptr()

    def data_ptr(self) -> int:
        return self._ptr

    @staticmethod
    def ptr_range() -> int:
        return 0


def _record(self, *args, grid, warmup, **kwargs):
    grid = grid(dict(zip(self.arg_names, args))) if callable(grid) else grid
    args = tuple(_Pointer(a) if isinstance(a, torch.Tensor) else a for a in args)
    _RECORDED.append(Launch(self, args, dict(kwargs), tuple(grid), _SOURCE[0]))
    return None


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Kernel launches are recorded, not run; Triton is allowed on CPU tensors (its outputs stay garbage,
    which only the skipped kernels would read)."""
    from pvdm_fast.ops import dispatch

    original_run, original_reason = triton_jit.JITFunction.run, dispatch.backend_unavailable_reason

    def reason(backend, device_type):
        return None if backend == "triton" else original_reason(backend, device_type)

    triton_jit.JITFunction.run = _record
    dispatch.backend_unavailable_reason = reason
    _RECORDED.clear()
    try:
        yield _RECORDED
    finally:
        triton_jit.JITFunction.run = original_run
        dispatch.backend_unavailable_reason = original_reason


# ---- workloads: the GPU tests' and the kernel benchmarks' calls, on CPU tensors


def _test_module(name: str):
    """A module of python_tests/ops, imported as a package member (its relative imports work)."""
    import importlib
    import types

    if str(ROOT / "python_tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "python_tests"))
    package = "_pvdm_gpu_tests"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(ROOT / "python_tests" / "ops")]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def test_workloads(quick: bool) -> Iterator[tuple[str, Callable[[], object]]]:
    """(label, call) for every parametrisation of the Triton GPU tests (test_gpu_* of python_tests/ops)."""
    ta, tj = _test_module("test_axial_attention"), _test_module("test_joint_attention")
    tg, tt = _test_module("test_group_norm_silu"), _test_module("test_triplane_decode")
    tx = _test_module("test_axis_gather")
    dtypes = (torch.bfloat16,) if quick else DTYPES
    for dtype in dtypes:
        for case in ta.GPU_CASES + ta.CASES:
            yield f"axial_attention {case} {dtype}", lambda c=case, d=dtype: ta._run("triton", c, *ta._inputs(c, d))
        for case in tj.GPU_CASES + tj.CASES:
            yield f"joint_attention {case} {dtype}", lambda c=case, d=dtype: tj._run("triton", c, *tj._inputs(c, d))
        gn_cases = tg.CASES + [(4, 256, [1024, 512, 512], 32, True, True, True), (4, 1024, [16, 8, 8], 32, True, True, True)]
        for b, c, segs, groups, ws, wsh, silu in gn_cases:
            yield (f"group_norm_silu {(b, c, segs, groups)} {dtype}",
                   lambda a=(b, c, segs, ws, wsh), g=groups, s=silu, d=dtype:
                   tg._run("triton", *tg._inputs(*a, d), a[2], g, s))
        for norm in (False, True):
            for b, t, h, w, c, e in tt.GPU_CASES:
                yield (f"triplane_decode {(b, t, h, w, c, e)} norm={norm} {dtype}",
                       lambda a=(b, t, h, w, c, e), n=norm, d=dtype:
                       tt._run(tt.triplane_decode, "triton", a[1:4], *tt._inputs(*a, d), n))
            for grid, c in [(tx.GRID, 37), ((16, 8, 8), 64), ((16, 32, 32), 384)]:
                for axis in tx.AXES:
                    yield (f"axis_gather {grid} C{c} {axis} norm={norm} {dtype}",
                           lambda g=grid, c=c, ax=axis, n=norm, d=dtype:
                           tx._run(tx.axis_gather, "triton", ax, *tx._inputs(2, g, c, ax, d), n, grid=g))


def bench_workloads(quick: bool) -> Iterator[tuple[str, Callable[[], object]]]:
    """(label, call) for the fused rows of benchmarks/kernels.py, forward and backward, bf16."""
    import kernels
    import kernels_attention as ka
    import kernels_triplane as kt

    from pvdm_fast import ops

    dtype, cpu = torch.bfloat16, torch.device("cpu")

    def axial(case):
        x = torch.randn(*case["shape"], 3 * case["heads"] * case["d"], dtype=dtype, requires_grad=True)
        with ops.use_backend("triton"):
            out = ops.axial_attention(x, case["heads"], case["axis"], rotary=ka._rotary(case, cpu),
                                      first_query_only=case.get("first", False))
        out.backward(torch.randn_like(out))

    def joint(case):
        # the token-major layout the UNet (and now kernels_attention.py) hands the kernel
        x = torch.randn(case["batch"], case["length"], 3 * case["channels"], dtype=dtype, requires_grad=True)
        with ops.use_backend("triton"):
            out = ops.joint_attention(x.transpose(1, 2), case["heads"])
        out.backward(torch.randn_like(out))

    def group_norm(case):
        b, c = case["batch"], case["channels"]
        segments = [r * k for r, k in case["planes"]]
        leaves = [torch.randn(*s, dtype=dtype, requires_grad=True)
                  for s in ((b, c, sum(segments)), (c,), (c,), (b, c), (b, c))]
        with ops.use_backend("triton"):
            y = ops.group_norm_silu(leaves[0], leaves[1], leaves[2], scale=leaves[3], shift=leaves[4],
                                    segments=segments)
        y.backward(torch.randn_like(y))

    def triplane(case):
        from pvdm_fast.ops import axis_gather, triplane_decode

        b, (t, h, w), c, e = case["batch"], case["grid"], case["channels"], 4
        latent = torch.randn(b, e, h * w + t * w + t * h, dtype=dtype, requires_grad=True)
        weights = [torch.randn(c, e, 1, 1, dtype=dtype, requires_grad=True) for _ in range(3)]
        biases = [torch.randn(c, dtype=dtype, requires_grad=True) for _ in range(3)]
        gamma, beta = (torch.randn(c, dtype=dtype, requires_grad=True) for _ in range(2))
        with ops.use_backend("triton"):
            triplane_decode(latent, (t, h, w), weights, biases).float().sum().backward()
            v, y = triplane_decode(latent, (t, h, w), weights, biases, norm_weight=gamma, norm_bias=beta)
            (v.float().sum() + y.float().sum()).backward()
            x = torch.randn(b, t * h * w, c, dtype=dtype, requires_grad=True)
            for axis, a in (("xy", t), ("yt", h), ("xt", w)):
                token = torch.randn(1, 1, c, dtype=dtype, requires_grad=True)
                pos = torch.randn(1, a + 1, c, dtype=dtype, requires_grad=True)
                s, y = axis_gather(x, (t, h, w), axis, token, pos, norm_weight=gamma, norm_bias=beta)
                (s.float().sum() + y.float().sum()).backward()

    def tuned(call, case, settings):
        with ka.tuning(**settings):
            call(case)

    # the benchmark also times the attention cases at other launch settings (kernels_attention.py)
    for settings in [{}] + ([] if quick else ka.sweep_settings(multi_trip=True)):
        suffix = "".join(f" {k}={v}" for k, v in settings.items())
        for case in ka._axial_cases(quick):
            yield f"bench {case['op']} {case['case']}{suffix}", lambda c=case, s=settings: tuned(axial, c, s)
        for case in ka._joint_cases(quick):
            yield (f"bench joint_attention L{case['length']} C{case['channels']}{suffix}",
                   lambda c=case, s=settings: tuned(joint, c, s))
    for case in kernels._unet_gn_cases(quick):
        yield f"bench group_norm_silu C{case['channels']}", lambda c=case: group_norm(c)
    for case in (kt.SHAPES[:1] if quick else kt.SHAPES):
        yield f"bench triplane {case['name']}", lambda c=case: triplane(c)


PRESETS = ("demo", "ucf101-128", "ucf101-256", "sky-256")


def model_workloads(quick: bool) -> Iterator[tuple[str, Callable[[], object]]]:
    """(label, call): a training step's forward and backward of each preset's autoencoder and UNet at
    batch 1, in float32 and under bf16 autocast (as benchmarks/end_to_end.py runs them), every op forced to
    Triton. CPU time: the linear layers and convolutions run; attention and the fused ops are recorded."""
    from pvdm_fast import ops
    from pvdm_fast.configs import build, load_config
    from pvdm_fast.models.autoencoder import Autoencoder
    from pvdm_fast.models.unet import TriplaneUNet

    def autoencoder(cfg, amp):
        torch.manual_seed(0)
        model = Autoencoder(cfg)
        video = torch.rand(1, 3, cfg.frames, *cfg.frame_size) * 2 - 1
        with ops.use_backend("triton"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = (model(video).float() - video).abs().mean()
        loss.backward()

    def unet(cfg, amp):
        torch.manual_seed(0)
        model = TriplaneUNet(cfg)
        x = torch.rand(1, cfg.in_channels, cfg.latent_length) * 2 - 1
        with ops.use_backend("triton"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x, torch.tensor([10]), torch.rand_like(x))
        out.float().square().mean().backward()

    for name in PRESETS[:1] if quick else PRESETS:
        cfg = load_config(name)
        ae_cfg, unet_cfg = build(cfg, "autoencoder"), build(cfg, "unet")
        for amp in (False, True):
            kind = "bf16 autocast" if amp else "float32"
            yield f"model {name} autoencoder {kind}", lambda c=ae_cfg, a=amp: autoencoder(c, a)
            yield f"model {name} unet {kind}", lambda c=unet_cfg, a=amp: unet(c, a)


def record(workloads) -> tuple[list[Launch], list[dict]]:
    """Runs every workload with launches recorded; returns (launches, workloads that raised)."""
    failures = []
    with recording() as launches:
        for label, call in workloads:
            _SOURCE[0] = label
            try:
                call()
            except Exception as exc:  # a launcher rejecting a test shape is a finding, not a crash
                failures.append({"workload": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return list(launches), failures


# ---- specialisation and compilation


def specialise(launch: Launch, target: GPUTarget):
    """What Triton's launcher would compile for this launch on `target`: (ASTSource, options)."""
    backend = make_backend(target)
    kernel = launch.kernel
    binder = triton_jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.kwargs)  # the two options JITFunction.run adds before binding
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options


def _variant_key(src: ASTSource, options) -> str:
    """Triton's own identity of a compilation (source, signature, constants, alignment, options)."""
    return f"{src.hash()}-{options.hash()}"


def _tool(name: str) -> str:
    return str(pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack frame and local memory bytes (where spilled registers go) and static shared memory
    of the cubin's kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    body = out.split("Function", 1)[1] if "Function" in out else ""  # the kernel's line, not "Common"
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", body))
    return {"registers": int(fields.get("REG", -1)), "stack_bytes": int(fields.get("STACK", 0)),
            "local_bytes": int(fields.get("LOCAL", 0)), "static_shared_bytes": int(fields.get("SHARED", 0))}


def _constexpr_summary(src: ASTSource) -> str:
    names = src.fn.arg_names
    parts = []
    for path, value in sorted(src.constants.items(), key=str):
        name = names[path[0]] if len(path) == 1 else str(path)
        if name.isupper() or isinstance(value, (bool, str)):
            parts.append(f"{name}={value}")
    return " ".join(parts)


def occupancy(arch: int, registers: int, shared_bytes: int, num_warps: int) -> int:
    """Resident blocks per multiprocessor the registers and shared memory allow (theoretical occupancy):
    registers are allocated per warp in units of 256, and each block also holds 1 KB of system shared
    memory."""
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = (65536 // per_warp) // num_warps if per_warp else SM_BLOCKS[arch]
    by_smem = SM_SHARED[arch] // (shared_bytes + 1024)
    return min(by_regs, by_smem, SM_BLOCKS[arch], SM_THREADS[arch] // (32 * num_warps))


def compile_variant(src: ASTSource, options, target: GPUTarget) -> dict:
    t0 = time.perf_counter()
    row = {"kernel": src.name.split(".")[-1], "module": src.fn.module, "arch": f"sm_{target.arch}",
           "dtypes": ",".join(sorted({v[1:] for v in src.signature.values() if isinstance(v, str) and v.startswith("*")})),
           "constexprs": _constexpr_summary(src), "num_warps": options.num_warps, "num_stages": options.num_stages}
    try:
        compiled = triton.compile(src, target=target, options=options.__dict__)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:400]
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    usage = resource_usage(compiled.asm["cubin"])
    shared = int(compiled.metadata.shared)
    blocks = occupancy(target.arch, usage["registers"], shared + usage["static_shared_bytes"], options.num_warps)
    row.update(usage, shared_bytes=shared, shared_limit=SHARED_LIMIT.get(target.arch), blocks_per_sm=blocks,
               warps_per_sm=blocks * options.num_warps)
    limit = SHARED_LIMIT.get(target.arch)
    if limit is not None and shared > limit:
        row["error"] = f"needs {shared} B of shared memory per block; sm_{target.arch} allows {limit}"
    if usage["registers"] * options.num_warps * 32 > 65536:
        row["error"] = f"{usage['registers']} registers x {options.num_warps * 32} threads exceed 65536 per block"
    return row


_LAUNCHES: list[Launch] = []  # what the compile workers (forked) specialise and compile


def _compile_one(job: tuple[int, int]) -> dict:
    """Compiles one variant; a kernel its launcher steps down (pvdm_fast.ops.triton._fit) is compiled again
    one pipelining stage shallower while it needs more shared memory than the target has, as at run time."""
    from pvdm_fast.ops.triton import _fit

    arch, index = job
    target = GPUTarget("cuda", arch, 32)
    launch = _LAUNCHES[index]
    src, options = specialise(launch, target)
    planned = options.num_stages
    while True:
        row = compile_variant(src, options, target)
        over = row.get("shared_bytes", 0) > SHARED_LIMIT[arch]
        if not (over and launch.kernel in _fit.STAGED and options.num_stages > 1):
            break
        options = dataclasses.replace(options, num_stages=options.num_stages - 1)
    if options.num_stages != planned:
        row["planned_stages"] = planned
    return row


def check(launches: list[Launch], archs: list[int], jobs: int = 1, log=print) -> list[dict]:
    """Compile every distinct variant of `launches` for each arch (`jobs` processes); one row per
    (variant, arch). Compiled kernels land in Triton's cache, so on a GPU machine this also warms it."""
    import multiprocessing

    rows, work, meta = [], [], []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        variants: dict[str, dict] = {}
        for index, launch in enumerate(launches):
            try:
                src, options = specialise(launch, target)
            except Exception as exc:
                rows.append({"kernel": launch.kernel.__name__, "arch": f"sm_{arch}", "workload": launch.source,
                             "error": f"specialisation: {type(exc).__name__}: {exc}"[:400]})
                continue
            entry = variants.setdefault(_variant_key(src, options),
                                        {"index": index, "launches": 0, "max_grid": [0, 0, 0]})
            entry["launches"] += 1
            grid = list(launch.grid) + [1] * (3 - len(launch.grid))
            entry["max_grid"] = [max(a, b) for a, b in zip(entry["max_grid"], grid)]
        log(f"sm_{arch} ({ARCH_NAMES[arch]}): {len(launches)} launches, {len(variants)} distinct kernel variants")
        for entry in variants.values():
            work.append((arch, entry["index"]))
            meta.append(entry)
    _LAUNCHES[:] = launches
    t0 = time.perf_counter()
    if jobs > 1 and len(work) > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.imap(_compile_one, work)
            compiled = [_report(i, len(work), r, log) for i, r in enumerate(results)]
    else:
        compiled = [_report(i, len(work), _compile_one(job), log) for i, job in enumerate(work)]
    log(f"compiled {len(work)} variants in {time.perf_counter() - t0:.1f} s wall ({jobs} processes)")
    for row, entry in zip(compiled, meta):
        row.update(launches=entry["launches"], workload=launches[entry["index"]].source,
                   max_grid="x".join(map(str, entry["max_grid"])))
        over = [f"grid[{j}]={g} > {lim}" for j, (g, lim) in enumerate(zip(entry["max_grid"], GRID_LIMIT)) if g > lim]
        if over and "error" not in row:
            row["error"] = "launch grid over CUDA's limit: " + ", ".join(over)
        rows.append(row)
    return rows


def _report(i: int, n: int, row: dict, log) -> dict:
    log(f"  [{i + 1}/{n}] {row['kernel']} {row['arch']} {row['dtypes']} {row['constexprs']} w{row['num_warps']}: "
        f"{row.get('error') or 'ok'} ({row['compile_s']} s)")
    return row


def main(argv=None) -> int:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_LIMIT),
                   help="compute capability x10 to compile for (repeatable; default 90)")
    p.add_argument("--cases", default="tests,bench",
                   help="comma-separated: tests (GPU tests), bench (kernel benchmarks), models (each preset's "
                        "autoencoder and UNet training step; minutes of CPU time at the full presets)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: all cores)")
    p.add_argument("--only", metavar="REGEX", help="keep the workloads whose label matches (e.g. 'triplane')")
    args = p.parse_args(argv)
    archs = args.arch or [90]
    kinds = {k.strip() for k in args.cases.split(",") if k.strip()}
    if not kinds or kinds - {"tests", "bench", "models"}:
        p.error(f"--cases takes tests, bench and/or models, got {args.cases!r}")
    workloads = []
    if "tests" in kinds:
        workloads += list(test_workloads(args.quick))
    if "bench" in kinds:
        workloads += list(bench_workloads(args.quick))
    if "models" in kinds:
        workloads += list(model_workloads(args.quick))
    if args.only:
        try:
            keep = re.compile(args.only)
        except re.error as exc:
            p.error(f"--only {args.only!r} is not a regular expression: {exc}")
        workloads = [(label, call) for label, call in workloads if keep.search(label)]
        if not workloads:
            p.error(f"--only {args.only!r} matches no workload")
    t0 = time.perf_counter()
    launches, failures = record(workloads)
    print(f"recorded {len(launches)} launches from {len(workloads)} workloads in {time.perf_counter() - t0:.1f} s")
    for f in failures:
        print(f"workload failed: {f['workload']}: {f['error']}")
    rows = check(launches, archs, max(1, args.jobs))
    columns = ["kernel", "arch", "dtypes", "constexprs", "num_warps", "num_stages", "planned_stages", "registers",
               "stack_bytes", "local_bytes",
               "shared_bytes", "blocks_per_sm", "max_grid", "launches", "compile_s", "error"]
    _bench.print_table(rows, columns)
    bad = [r for r in rows if "error" in r]
    spills = [r for r in rows if r.get("stack_bytes", 0) + r.get("local_bytes", 0) > 0]
    total = sum(r.get("compile_s", 0.0) for r in rows)
    print(f"{len(rows)} variants compiled in {total:.1f} s; {len(bad)} failed; {len(spills)} use a stack frame or "
          f"local memory (spilled registers); {len(failures)} workloads raised")
    _bench.write_json(args.json, rows, workload_failures=failures, archs=[f"sm_{a}" for a in archs],
                      triton=triton.__version__)
    return 1 if bad or failures else 0


if __name__ == "__main__":
    sys.exit(main())
