"""The benchmark scripts must keep running: smoke runs on the CPU with the tiny preset (no timings
are asserted; speed claims live in the scripts' output, not in tests)."""
import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_end_to_end_script_runs_every_part_on_the_cpu(tmp_path):
    e2e = _load("end_to_end")
    out = tmp_path / "e2e.json"
    rc = e2e.main(["--preset", "tiny", "--device", "cpu", "--backends", "reference", "--reps", "1",
                   "--warmup", "0", "--ddim-steps", "2", "--dpm-steps", "2", "--long-frames", "8",
                   "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0, [r for r in doc["rows"] if "error" in r]
    whats = {r["what"] for r in doc["rows"]}
    assert {"autoencoder train step", "diffusion train step (cached latents)",
            "diffusion train step (encoder in the loop)", "sample one clip", "long video (8 frames)"} <= whats
    assert all(r.get("s_per_step", 1) > 0 for r in doc["rows"])


def test_gpu_only_scripts_exit_cleanly_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert _load("kernels").main([]) == 0
    assert _load("sanitizer_driver").main() == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_readme_table_renders_results_and_rewrites_only_its_block(tmp_path):
    table = _load("readme_table")
    doc = {"device": "NVIDIA H100", "commit": "abc1234", "versions": {"torch": "2.11"},
           "gpu_tests": {"counts": {"passed": 3, "failed": 0}},
           "benchmarks": {"end_to_end": {"rows": [
               {"what": "autoencoder train step", "backend": "auto", "batch": 1, "s_per_step": 0.5,
                "clips_per_s": 2.0, "peak_gib_per_clip": 4.2, "largest_batch": 5, "mfu": 0.41}]},
               "kernels": {"rows": [{"op": "group_norm_silu", "shape": "16x256", "dtype": "bfloat16",
                                     "pass": "fwd", "backend": "cuda", "ms": 0.1, "GB/s": 2500.0,
                                     "pct_of_copy_bw": 83.0},
                                    {"op": "axial_attention space+rot", "case": "space-L1024", "dtype": "bfloat16",
                                     "pass": "fwd", "backend": "triton", "ms": 0.2, "TFLOP/s": 410.0,
                                     "speedup_vs_best_sdpa": 0.8}],
                           "backend_preferences": {"NVIDIA H100": {
                               "axial_attention": {"bfloat16": ["triton"]},
                               "axial_attention@space-L1024": {"bfloat16": {"fwd": "sdpa", "fwd+bwd": "triton"}},
                               "axial_attention@time-L16": {"bfloat16": {"fwd": "triton"}}}}}}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "h100-abc1234.json").write_text(json.dumps(doc))
    text = table.render(table.load_results(tmp_path / "results"))
    assert "NVIDIA H100" in text and "abc1234" in text and "| 4.2 |" in text and "| 83 |" in text
    assert "| 410 | 0.8 |" in text
    assert "the model's SDPA path: axial_attention@space-L1024 (bfloat16 fwd)." in text
    shipped = table.shipped_preferences(table.load_results(tmp_path / "results"))
    assert shipped == doc["benchmarks"]["kernels"]["backend_preferences"]
    assert table.write_shipped_preferences(shipped, tmp_path / "prefs.json")
    assert json.loads((tmp_path / "prefs.json").read_text()) == shipped
    assert not table.write_shipped_preferences({}, tmp_path / "none.json") and not (tmp_path / "none.json").exists()
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{table.START}\nold\n{table.END}\nafter\n")
    table.update_readme(readme, "NEW")
    assert readme.read_text() == f"before\n{table.START}\nNEW\n{table.END}\nafter\n"
    assert "No GPU results" in table.render([])


def test_readme_table_takes_the_latest_run_by_its_recorded_date(tmp_path):
    """File mtimes in a checkout say nothing about which run is newer: the date the run recorded does."""
    import os

    table = _load("readme_table")
    results = tmp_path / "results"
    results.mkdir()
    for name, commit, date, mtime in (("new", "bbb2222", "2026-12-02T10:00:00+00:00", 1_000),
                                      ("old", "aaa1111", "2026-11-01T10:00:00+00:00", 2_000)):
        path = results / f"h100-{name}.json"
        path.write_text(json.dumps({"device": "NVIDIA H100", "commit": commit,
                                    "benchmarks": {"kernels": {"date": date, "rows": []}}}))
        os.utime(path, (mtime, mtime))  # the older run's file looks newer on disk
    (doc,) = table.load_results(results)
    assert doc["commit"] == "bbb2222" and "_when" not in doc


def test_train_step_script_with_real_batches_and_the_encoder_in_the_loop(tmp_path):
    bench = _load("train_step")
    out = tmp_path / "steps.json"
    bench.main(["--model", "both", "--data", "synthetic:4", "--frames", "4", "--resolution", "16",
                "--ae-channels", "16", "--patch-size", "4", "--latent-size", "4", "--model-channels", "32",
                "--channel-mult", "1", "--attention-resolutions", "1", "--num-heads", "1", "--steps", "1",
                "--warmup", "0", "--workers", "0", "--device", "cpu", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["autoencoder", "unet"]
    assert rows[1]["source"].startswith("encoder in the loop") and all(r["clips_per_s"] > 0 for r in rows)


def test_official_style_baseline_computes_our_function_and_the_comparison_runs(tmp_path):
    """The baseline that train_step.py --compare-official-style times must be the same function as our
    autoencoder (only the execution differs): float64 outputs and gradients agree, time and space
    attention alike, on a non-square-in-time grid."""
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from official_style import official_style

    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(resolution=24, frames=6, patch_size=4, channels=16, heads=2, dim_head=8,
                                          encoder_depth=2, decoder_depth=2, axis_depth=1, axis_heads=2,
                                          axis_mlp_dim=32)).double()
    twin = official_style(model)
    video = torch.rand(2, 3, 6, 24, 24, dtype=torch.float64) * 2 - 1
    ours, theirs = model(video), twin(video)
    assert ours.abs().mean() > 0.01
    torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-10)

    out = tmp_path / "ts.json"
    _load("train_step").main(["--model", "autoencoder", "--compare-official-style", "--quick", "--resolution", "16",
                              "--frames", "4", "--ae-channels", "16", "--patch-size", "4", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["autoencoder", "autoencoder (official-style)"]
    assert rows[0]["speedup_vs_official_style"] > 0


def test_kernel_benchmark_times_torch_compile_last_and_saves_after_each_op(monkeypatch):
    import types

    kernels = _load("kernels")
    calls = []

    def fake_rows(name, fail=False):
        def rows(quick):
            phase = kernels._bench.PHASE[0]
            calls.append((name, phase))
            if fail and phase == "fast":
                raise RuntimeError("boom")
            return [{"op": name, "backend": b} for b in ("triton", "torch.compile") if kernels._bench.measured(b)]
        return rows

    modules = {"kernels_attention": types.SimpleNamespace(rows=fake_rows("attn", fail=True)),
               "kernels_triplane": types.SimpleNamespace(rows=fake_rows("tri"))}
    monkeypatch.setattr(kernels, "group_norm_silu_rows", fake_rows("gn"))
    monkeypatch.setattr(kernels, "importlib", types.SimpleNamespace(import_module=modules.__getitem__))
    saved = []
    rows = kernels.all_rows(done=lambda r: saved.append(len(r)))
    # compiled phase: the triplane ops first (issue 9's goal is against torch.compile)
    assert calls == [("gn", "fast"), ("attn", "fast"), ("tri", "fast"),
                     ("tri", "compiled"), ("gn", "compiled"), ("attn", "compiled")]
    assert [r.get("backend") for r in rows] == ["triton", None, "triton", "torch.compile", "torch.compile",
                                                "torch.compile"]
    assert rows[1]["op"] == "kernels_attention" and rows[1]["error"].startswith("RuntimeError: boom")
    assert saved == [1, 2, 3, 4, 5, 6]  # the JSON is rewritten after every op
    assert kernels._bench.PHASE[0] == "all"
