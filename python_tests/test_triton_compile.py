"""benchmarks/triton_compile.py: the Triton kernels compiled for a real GPU target (sm_90) on this CPU machine.

The interpreter runs the kernels' arithmetic; only the GPU compiler sees tile shapes, layouts, registers
and shared memory. These tests compile, in subprocesses (the interpreter is switched on in this one),
every kernel variant the GPU tests launch (bf16) and check that each would launch on an H100/H200, and
that the checker does report a kernel that would not."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every kernel the Triton backends launch, by module.
KERNELS = {
    "axial_attention": {"_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv"},
    "group_norm_silu": {"_gn_fwd_kernel", "_gn_bwd_kernel"},
    "triplane_decode": {"_fwd_kernel", "_ln_means_kernel", "_sums_kernel"},
    "axis_gather": {"_fwd_kernel", "_bwd_kernel"},
}


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_every_kernel_the_gpu_tests_launch_compiles_and_fits_an_sm90(tmp_path):
    out = tmp_path / "compile.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"), "--quick", "--arch", "90",
                           "--jobs", "2", "--json", str(out)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=1500)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert not doc["workload_failures"], doc["workload_failures"]
    assert [r for r in rows if "error" in r] == [], "kernels that would not compile or launch on sm_90"
    assert proc.returncode == 0, proc.stdout[-3000:]
    launched = {}
    for r in rows:
        launched.setdefault(r["module"].rsplit(".", 1)[-1], set()).add(r["kernel"])
    for module, names in KERNELS.items():
        assert names <= launched.get(module, set()), (module, launched.get(module))
    for r in rows:
        assert r["arch"] == "sm_90" and r["registers"] > 0 and r["dtypes"]
        assert 0 <= r["shared_bytes"] <= r["shared_limit"] == 232448
        assert r["blocks_per_sm"] >= 1
    # the base time axis (bf16, 16 frames, 4 sequences a tile): all keys in one block, so no pipelining
    # and its buffers (the loop runs once)
    time_fwd = [r for r in rows if r["kernel"] == "_attn_fwd" and "G=4 BMP=16 BNP=16 BD=64" in r["constexprs"]]
    assert time_fwd and all(r["num_stages"] == 1 for r in time_fwd)


def test_only_keeps_matching_workloads_and_triplane_backward_fits_two_programs_an_sm(tmp_path):
    # --only: the triplane benchmark workload alone (decode and the three gathers, bf16, base shapes).
    out = tmp_path / "triplane.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"), "--quick", "--cases", "bench", "--jobs", "2"]
    proc = subprocess.run(cmd + ["--only", "bench triplane", "--json", str(out)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["module"].rsplit(".", 1)[-1] for r in rows} == {"triplane_decode", "axis_gather"}
    # The axis-sum backward has only batch x channel-slice programs (192 here): all of them must be resident
    # at once on an H100 (two an SM), without spills, and the LayerNorm row pass must not spill either.
    sums = [r for r in rows if r["kernel"] == "_sums_kernel"]
    assert sums and all(r["blocks_per_sm"] >= 2 and r["stack_bytes"] == 0 for r in sums), sums
    means = [r for r in rows if r["kernel"] == "_ln_means_kernel"]
    assert means and all(r["stack_bytes"] == 0 for r in means), means
    for bad, message in (("no such workload", "matches no workload"), ("(", "not a regular expression")):
        proc = subprocess.run(cmd + ["--only", bad], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


SNIPPET = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import triton_compile as tc  # drops TRITON_INTERPRET before triton is imported
    import torch, triton, triton.language as tl

    from pvdm_fast.ops.triton import _fit

    def body(A, B, C, K, BLOCK: tl.constexpr):
        r = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
        for k in range(0, K, BLOCK):
            a = tl.load(A + r[:, None] * K + k + r[None, :])
            b = tl.load(B + (k + r[:, None]) * BLOCK + r[None, :])
            acc += tl.dot(a, b)
        tl.store(C + r[:, None] * BLOCK + r[None, :], acc)

    dot_loop = triton.jit(body)
    staged_loop = _fit.staged(triton.jit(body))  # launched through _fit.launch: may step down

    @triton.jit
    def broken(X):
        tl.store(X, not_defined_anywhere)

    x = torch.zeros(256 * 1024, dtype=torch.float16)
    c = torch.zeros(256 * 256, dtype=torch.float32)
    with tc.recording() as launches:
        dot_loop[(1,)](x, x, c, 1024, BLOCK=256, num_warps=8, num_stages=4)  # 1 MB of pipelined tiles
        dot_loop[(1, 70000)](x, x, c, 1024, BLOCK=16)                      # grid y over 65535
        dot_loop[(3,)](x, x, c, 1024, BLOCK=16)                            # same variant: one compile
        broken[(1,)](c)
        staged_loop[(1,)](x, x, c, 1024, BLOCK=128, num_warps=8, num_stages=4)  # 4 x 64 KB; fits at 3
    rows = tc.check(list(launches), [90], jobs=1, log=lambda *a: None)
    occ = [tc.occupancy(90, 255, 32768, 4), tc.occupancy(90, 32, 16, 4), tc.occupancy(90, 150, 122880, 4),
           tc.occupancy(80, 64, 100000, 8)]
    print(json.dumps({"rows": rows, "occupancy": occ}))
""")


def test_the_checker_reports_what_would_not_compile_or_launch(tmp_path):
    script = tmp_path / "snippet.py"  # Triton reads a kernel's source from its file
    script.write_text(SNIPPET)
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "benchmarks")], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    big, small, bad, stepped = doc["rows"]
    assert big["kernel"] == stepped["kernel"] == "body" and big["shared_bytes"] > 232448 and "shared memory" in big["error"]
    assert small["launches"] == 2 and small["max_grid"] == "3x70000x1" and "grid" in small["error"]
    assert small["shared_bytes"] <= 232448 and small["registers"] > 0
    assert bad["kernel"] == "broken" and "not_defined_anywhere" in bad["error"]
    assert "error" not in stepped, stepped
    assert stepped["planned_stages"] == 4 and stepped["num_stages"] < 4 and stepped["shared_bytes"] <= 232448
    # 255 registers x 128 threads: 2 blocks of 64K registers; 16 B of shared memory: 16 blocks (threads
    # limit, 2048 / 128); 120 KB of shared memory: 1 block; 100 KB on an A100 (164 KB per SM): 1
    assert doc["occupancy"] == [2, 16, 1, 1]


SMALL_SHARED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import triton_compile as tc
    import torch

    ta, tj = tc._test_module("test_axial_attention"), tc._test_module("test_joint_attention")
    work = [(f"axial {c}", lambda c=c: ta._run("triton", c, *ta._inputs(c, torch.float32)))
            for c in ta.GPU_CASES if c[2] == 128]
    work += [(f"joint {c}", lambda c=c: tj._run("triton", c, *tj._inputs(c, torch.float32)))
             for c in tj.GPU_CASES if c[2] == 128]
    launches, failures = tc.record(work)
    print(json.dumps({"failures": failures, "rows": tc.check(launches, [89], jobs=2, log=lambda *a: None)}))
""")


def test_float32_head_dim_128_attention_fits_a_100_kb_gpu(tmp_path):
    """sm_86/sm_89 (RTX 30xx/40xx, L40) have 100 KB of shared memory per block: the float32 backward at
    head dim 128 must launch there (32-row tiles, pipelining stepped down by the launcher)."""
    script = tmp_path / "small_shared.py"
    script.write_text(SMALL_SHARED)
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "benchmarks")], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not doc["failures"]
    rows = doc["rows"]
    assert {r["kernel"] for r in rows} == {"_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv"}
    assert [r for r in rows if "error" in r] == []
    assert all(r["shared_bytes"] <= 101376 for r in rows)
