"""The CUDA kernels of kernels/, built for the CPU emulation of emu.h: `load()` returns a `_C` module
compiled from the real csrc/ launchers and bindings and the real kernels/ sources, translated as
little as possible (kernel launches and `__shared__` declarations), so that the `cuda`
backends of the fused ops run on CPU tensors in the test suite.

The build takes about 20 s on two cores (30 s with AddressSanitizer, see memcheck.py) and is cached
under build/cuda_emu/<hash of every input>. `activate` routes the ops' `cuda` backend to it (the
`emulated_cuda` fixture of python_tests/conftest.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from types import ModuleType
from typing import List, Optional

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / "build" / "cuda_emu"

# kernel<<<cfg>>>(args); and `kernel<T><<<...>>>(...)`; the config may hold casts such as
# static_cast<unsigned>(n) but no `>>>`.
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\)\s*;", re.S)
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;")
# A static `__shared__ TYPE NAME[N]...;` (or a scalar): one declarator, no initializer. `extern` ones
# that _DYNAMIC_SHARED did not take are matched too, to be left alone (and refused).
# On one line, so that a comment's `__shared__` never takes the next line's code.
_STATIC_SHARED = re.compile(r"(\bextern[ \t]+)?\b__shared__[ \t]+([^;{}=\[\]\n]+?)[ \t]*\b(\w+)[ \t]*((?:\[[^\[\];\n]*\][ \t]*)*);")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_FLAGS = ["-std=c++17", "-O1", "-g0", "-fPIC", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-pthread"]
# PVDM_EMU_SANITIZE=address builds (and loads) an AddressSanitizer variant: the memcheck test runs the
# kernels in it, in a Python started with libasan preloaded.
_SANITIZE = {"": [], "address": ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]}


def sanitizer() -> str:
    """The sanitizer the emulation is built with here: PVDM_EMU_SANITIZE ('' or 'address')."""
    name = os.environ.get("PVDM_EMU_SANITIZE", "")
    if name not in _SANITIZE:
        raise ValueError(f"PVDM_EMU_SANITIZE must be empty or 'address', got {name!r}")
    return name


class EmulationUnavailable(RuntimeError):
    """No C++ compiler or pybind11 here: the emulated kernels cannot be built."""


def translate(source: str, name: str) -> str:
    """A kernels/ source as the emulation compiles it: launches call emu::launch, dynamic shared
    memory comes from emu::dynamic_shared, and each static `__shared__` declaration (on the same line)
    becomes a `static` one followed by emu::static_shared(&NAME, sizeof NAME), which counts it toward
    the running kernel's static shared memory. Raises on a launch or declaration it cannot rewrite."""

    def launch(m: re.Match) -> str:
        args = m[3].strip()
        return f"::emu::launch(::emu::config({m[2]}), {m[1]}{', ' + args if args else ''});"

    def static_shared(m: re.Match) -> str:
        if m[1]:
            return m[0]
        var = m[3]
        return (f"static {m[2]} {var}{m[4]}; [[maybe_unused]] const bool {var}_emu_static_shared = "
                f"::emu::static_shared(&{var}, sizeof({var}));")

    out = _DYNAMIC_SHARED.sub(lambda m: f"{m[1]}* const {m[2]} = ::emu::dynamic_shared<{m[1]}>();", source)
    out = _STATIC_SHARED.sub(static_shared, out)
    out = _LAUNCH.sub(launch, out)
    if "<<<" in _COMMENT.sub("", out) or "__shared__" in _COMMENT.sub("", out):
        raise RuntimeError(f"{name}: a kernel launch or a `__shared__` declaration that the emulation "
                           f"build cannot translate (python_tests/cuda_emu/__init__.py)")
    return out


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EmulationUnavailable("no C++ compiler (g++) on PATH")
    return cxx


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError as exc:  # pragma: no cover - a test dependency
        raise EmulationUnavailable("pybind11 is not installed (pip install '.[test]')") from exc
    return pybind11.get_include()


def _inputs() -> List[pathlib.Path]:
    files = sorted((ROOT / "kernels").glob("*")) + sorted((ROOT / "csrc").glob("*"))
    files += sorted(HERE.glob("*.h")) + sorted(HERE.glob("*.cpp")) + sorted((HERE / "include").glob("*"))
    return [f for f in files if f.is_file()] + [pathlib.Path(__file__)]


def _key(cxx: str, includes: List[str], flags: List[str]) -> str:
    h = hashlib.sha256()
    for f in _inputs():
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h.update("\0".join([version, sys.version, *includes, *flags]).encode())
    return h.hexdigest()[:16]


def _compile(cxx: str, src: pathlib.Path, obj: pathlib.Path, flags: List[str]) -> None:
    cmd = [cxx, *flags, "-c", str(src), "-o", str(obj)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"emulation build failed: {' '.join(cmd)}\n{run.stderr[-6000:]}")


def build(jobs: Optional[int] = None) -> pathlib.Path:
    """Path of the emulated `_C` extension, built unless cached."""
    cxx = _compiler()
    includes = [_pybind11_include(), sysconfig.get_paths()["include"]]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    flags = _FLAGS + _SANITIZE[sanitizer()]
    final = CACHE / _key(cxx, includes, flags)
    lib = final / f"_C{suffix}"
    if lib.exists():
        os.utime(final)  # in use: newest for _prune
        return lib
    CACHE.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tmp-", dir=CACHE))
    try:
        (work / "kernels").mkdir()
        (work / "csrc").mkdir()
        for f in (ROOT / "kernels").iterdir():
            if f.is_file():
                (work / "kernels" / f.name).write_text(translate(f.read_text(), f"kernels/{f.name}"))
        for f in (ROOT / "csrc").iterdir():
            if f.is_file():
                shutil.copy2(f, work / "csrc" / f.name)
        kernel_flags = ["-x", "c++", "-I", str(HERE / "include"), "-include", str(HERE / "include" / "cuda_runtime.h")]
        host_flags = ["-DPVDM_WITH_CUDA", '-DPVDM_CUDA_ARCHS_STR="emulated"', *(f"-I{i}" for i in includes)]
        units = [(work / "kernels" / f.name, kernel_flags) for f in sorted((ROOT / "kernels").glob("*.cu"))]
        units += [(work / "csrc" / f.name, host_flags) for f in sorted((ROOT / "csrc").glob("*.cpp"))]
        selftest = work / "selftest.cpp"
        selftest.write_text(translate((HERE / "selftest.cpp").read_text(), "python_tests/cuda_emu/selftest.cpp"))
        units.append((selftest, kernel_flags))
        units.append((HERE / "emu_runtime.cpp", []))
        objs = [work / f"{i}_{src.stem}.o" for i, (src, _) in enumerate(units)]
        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            for f in [pool.submit(_compile, cxx, src, obj, flags + extra) for (src, extra), obj in zip(units, objs)]:
                f.result()
        out = work / lib.name
        link = subprocess.run([cxx, "-shared", *flags, "-o", str(out), *map(str, objs)], capture_output=True,
                              text=True)
        if link.returncode != 0:
            raise RuntimeError(f"emulation link failed:\n{link.stderr[-6000:]}")
        staged = work / "lib"
        staged.mkdir()
        out.rename(staged / lib.name)
        try:
            os.replace(staged, final)
        except OSError:
            if not lib.exists():  # another process won the race with a complete build, or a real error
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(keep=4)
    return lib


def _prune(keep: int) -> None:
    """Removes all but the `keep` newest builds (a plain and a sanitizer build are both in use)."""
    builds = sorted((d for d in CACHE.iterdir() if d.is_dir() and not d.name.startswith("tmp-")),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for d in builds[keep:]:
        shutil.rmtree(d, ignore_errors=True)


_MODULE: Optional[ModuleType] = None


def load() -> ModuleType:
    """The emulated `_C` (built on first use, then cached for the process)."""
    global _MODULE
    if _MODULE is None:
        spec = importlib.util.spec_from_file_location("cuda_emu._C", build())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULE = module
    return _MODULE


class Emulation:
    """The emulated `_C` module in use, and how often each of its launchers was called."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.calls: collections.Counter = collections.Counter()


def activate(monkeypatch) -> Emulation:
    """Until `monkeypatch` (pytest's) is undone, the `cuda` backend of every fused op runs the emulated
    kernels on CPU tensors: `_ext._C` is the emulated module, stream handles are 0, `torch.cuda.device`
    of a CPU device is a no-op and the dispatcher lets `cuda` take CPU tensors. Launcher calls are
    counted, so a test can tell that the kernels ran. Threads run in shuffled order (PVDM_EMU_ORDER,
    see emu_runtime.cpp) unless PVDM_EMU_ORDER is set. No kernel has a cudaFuncSetAttribute setting
    yet, as in a new process: a launcher that forgets to opt in fails even after an earlier test's launch
    of the same kernel opted in (the setting lasts, on a GPU too, for the rest of the process)."""
    import ctypes

    import torch

    from pvdm_fast.ops import _ext, dispatch

    module = load()
    ctypes.CDLL(module.__file__).pvdm_emu_reset_attributes()  # the library the module was loaded from
    emulation = Emulation(module)
    for name in dir(module):
        launcher = getattr(module, name)
        if name.startswith("_") or name == "build_info" or not callable(launcher):
            continue

        def counted(*args, _launcher=launcher, _name=name, **kwargs):
            emulation.calls[_name] += 1
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    real_device, real_reason = torch.cuda.device, dispatch.backend_unavailable_reason

    def device(d):
        if isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu":
            return contextlib.nullcontext()
        return real_device(d)

    def reason(backend: str, device_type: str):
        return real_reason(backend, "cuda" if backend == "cuda" else device_type)

    # Threads of a block run in a fresh random order between synchronisation points, unless the caller
    # chose one: results that depend on the order show a missing __syncthreads.
    monkeypatch.setenv("PVDM_EMU_ORDER", os.environ.get("PVDM_EMU_ORDER") or "shuffle")
    monkeypatch.setattr(_ext, "_C", module)
    monkeypatch.setattr(_ext, "stream_handle", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(dispatch, "_CUDA_OK", True)
    monkeypatch.setattr(dispatch, "backend_unavailable_reason", reason)
    return emulation
