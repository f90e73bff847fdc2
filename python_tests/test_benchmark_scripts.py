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
