#!/usr/bin/env bash
# One command for a lent GPU: build with the CUDA kernels, run every GPU-marked test, run the kernel
# benchmarks, and write benchmarks/results/<gpu>-<short commit>.json (device, versions, commit,
# every test outcome and every benchmark number). Also copied to $OUT when that is set.
# Budget: PVDM_GPU_BUDGET_S (540 s) in all, each step capped by what is left; the kernel benchmarks run
# right after the tests, so a run cut short still has the numbers that decide the SDPA routes.
# Usage: bash benchmarks/gpu_check.sh [--quick]
# With the device tool: bash benchmarks/fetch_gpu_wheels.sh here, then run
#   PVDM_COMMIT=<short sha> PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh   (carry [".whl"], timeout ~590 s: the steps stop by 540 s)
# and back here copy the returned <gpu>-<commit>.json into benchmarks/results/, run
# python benchmarks/readme_table.py (README table + pvdm_fast/ops/measured_prefs.json) and commit all three.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
quick="${1:-}"
# Under $OUT (the device tool's returned folder) every log lands where it comes back even if the
# command is cut short; elsewhere a temporary folder.
if [ -n "${OUT:-}" ]; then
  work="$OUT/gpu_check_work"; mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/pvdm_gpu.XXXXXX")"
fi
started=$(date +%s)
# The device tool stops a command at 600 s; every step below gets at most what is left of this budget,
# so the results file is always written. Priority order: tests, kernel benchmarks, sanitizer, end to end.
budget="${PVDM_GPU_BUDGET_S:-540}"
cap() {  # cap SECONDS: SECONDS, or what is left of the budget if less; at least 1 (timeout 0 = no limit)
  local left=$(( budget - ($(date +%s) - started) ))
  if [ "$left" -lt "$1" ]; then echo $(( left > 1 ? left : 1 )); else echo "$1"; fi
}

export PVDM_CUDA="${PVDM_CUDA:-ON}"
export PVDM_CUDA_ARCHS="${PVDM_CUDA_ARCHS:-90a-real}"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo "${PVDM_COMMIT:-unknown}")"
export PVDM_COMMIT="$commit"

# Runtime dependencies the GPU image lacks (omegaconf, av) travel as wheels in .whl/: run
# benchmarks/fetch_gpu_wheels.sh here first and give the device tool carry: [".whl"]
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# Every Triton kernel variant the GPU tests and benchmarks launch, compiled on all cores while the
# extension builds: the tests then load them from Triton's cache instead of compiling ~400 variants one
# at a time inside their time limit. No GPU needed (CPU tensors, launches recorded, not run).
echo "== Triton kernels compiled ahead ($(nproc) processes, alongside the build)"
( PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 timeout 240 python3 "$root/benchmarks/triton_compile.py" --jobs "$(nproc)" \
    --json "$work/triton_compile.json" > "$work/triton_compile.log" 2>&1; echo $? > "$work/triton_compile.rc" ) &
compile_pid=$!

echo "== build (PVDM_CUDA=$PVDM_CUDA PVDM_CUDA_ARCHS=$PVDM_CUDA_ARCHS)"
build_rc=0
python3 -m pip install -q --no-build-isolation --no-deps . > "$work/build.log" 2>&1 || build_rc=$?
tail -n 30 "$work/build.log"
wait "$compile_pid"
echo "triton_compile.py exit status $(cat "$work/triton_compile.rc" 2>/dev/null || echo '?'):"
grep -E "^(recorded|sm_|compiled|[0-9]+ variants)" "$work/triton_compile.log" || tail -n 5 "$work/triton_compile.log"
# run from outside the checkout so the installed package (with _C) is imported, not the source tree
cd "$work"
python3 -c "import json, pvdm_fast.ops._ext as e; print(json.dumps(e.build_info()))" | tee build_info.json

echo "== GPU tests"
# Much of a GPU test's time is its float64 truth on the CPU (1024-token attention, 4096-token UNet
# attention): with pytest-xdist (in the device image) four workers share the GPU and 4 cores each.
workers=()
threads=()
if python3 -c "import xdist" 2> /dev/null; then workers=(-n 4); threads=(OMP_NUM_THREADS=4); fi
test_rc=0
env ${threads[@]+"${threads[@]}"} timeout "$(cap 180)" python3 -m pytest -q -m gpu -p no:cacheprovider \
  ${workers[@]+"${workers[@]}"} --rootdir "$root" -c "$root/pyproject.toml" \
  --junitxml="$work/gpu_tests.xml" "$root/python_tests" 2>&1 | tee "$work/gpu_tests.log" | tail -n 40
test_rc=${PIPESTATUS[0]}

echo "== kernel benchmarks (fused kernels and SDPA first, torch.compile last; kernels.json rewritten after each op)"
bench_rc=0
timeout "$(cap 150)" python3 "$root/benchmarks/kernels.py" ${quick:+--quick} --write-prefs --json "$work/kernels.json" \
  2>&1 | tee "$work/kernels.log"
bench_rc=${PIPESTATUS[0]}

echo "== compute-sanitizer (memcheck, racecheck) on every CUDA kernel, forward and backward"
san_rc=0
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    if [ "$(cap 75)" -lt 20 ]; then echo "no time left for $tool"; san_rc=124; continue; fi
    timeout "$(cap 75)" "$sanitizer" --tool "$tool" --error-exitcode 99 --target-processes all \
      python3 "$root/benchmarks/sanitizer_driver.py" > "$work/sanitizer_$tool.log" 2>&1 || san_rc=$?
    tail -n 5 "$work/sanitizer_$tool.log"
  done
else
  echo "compute-sanitizer not found"; san_rc=127
fi

for script in end_to_end.py; do
  if [ -f "$root/benchmarks/$script" ]; then
    echo "== $script"
    left=$(cap 600)
    if [ "$left" -gt 30 ]; then
      timeout "$left" python3 "$root/benchmarks/$script" ${quick:+--quick} --json "$work/${script%.py}.json" || true
    fi
  fi
done

python3 "$root/benchmarks/collect_results.py" --work "$work" --root "$root" --commit "$commit" \
  --build-rc "$build_rc" --test-rc "$test_rc" --bench-rc "$bench_rc" --sanitizer-rc "$san_rc"
rc=$?
echo "== done in $(( $(date +%s) - started )) s"
exit $(( build_rc || test_rc || san_rc || rc ))
