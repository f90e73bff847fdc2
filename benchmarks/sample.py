"""Sampling benchmark: seconds per clip and peak memory for the official protocol (DDIM, 400 steps,
eta 1) and DPM-Solver++(2M) at 25 steps, eager and with CUDA graphs.

    python benchmarks/sample.py [--quick] [--json PATH] [--config PRESET] [--batch N]

Models are built from a preset with random weights (speed does not depend on the weights): the base
config `ucf101-256` on a GPU (bf16 autocast), the tiny `demo` preset on a CPU. The time of a call is
fitted as t(steps) = fixed + per_step * steps from two short runs (the fixed part is the decoding and
set-up), so the full protocol's time per clip is reported without running 400 steps in quick mode;
without --quick the protocol itself is also run and timed.
"""
from __future__ import annotations

import pathlib
import resource
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _bench  # noqa: E402

CASES = [("official ddim eta=1", "ddim", 400, 1.0), ("dpm++2m", "dpm++2m", 25, None)]


def build_pipeline(preset: str, device: torch.device, cuda_graph: bool, compile: bool = False):
    from omegaconf import OmegaConf

    from pvdm_fast.configs import load_config
    from pvdm_fast.diffusion.schedule import DiffusionConfig
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig
    from pvdm_fast.pipeline import Pipeline

    cfg = load_config(preset)
    section = lambda name: OmegaConf.to_container(cfg[name], resolve=True)  # noqa: E731
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(**section("autoencoder")))
    unet = TriplaneUNet(UNetConfig(**section("unet")))
    return Pipeline(ae, unet, DiffusionConfig(**section("diffusion")), device=device, cuda_graph=cuda_graph,
                    compile=compile)


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def measure(pipe, sampler: str, steps: int, eta: float | None, batch: int, full: bool) -> dict:
    """Fit t(n) = fixed + per_step * n from two short runs (each after its own warm-up run)."""
    short = sorted({max(2, min(steps, 10)), max(3, min(steps, 30))})

    def call(n: int):
        return lambda: pipe(num_videos=batch, sampler=sampler, steps=n, eta=eta, seed=0)

    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    times = {}
    for n in short:
        call(n)()  # warm-up (and CUDA-graph capture for this plan length)
        times[n] = _timed(call(n))
    (n1, t1), (n2, t2) = sorted(times.items())
    per_step = (t2 - t1) / (n2 - n1)
    fixed = max(t1 - per_step * n1, 0.0)
    row = {"per_step_ms": per_step * 1e3, "fixed_s": fixed,
           "s_per_clip": (fixed + per_step * steps) / batch, "measured": "fit"}
    if full:
        call(steps)()
        total = _timed(call(steps))
        row.update(s_per_clip=total / batch, measured="full run")
    row["videos_per_s"] = 1.0 / row["s_per_clip"]
    row["peak_mb"] = _peak_mb(pipe.device)
    return row


def rows(quick: bool = False, preset: str | None = None, batch: int | None = None) -> list[dict]:
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    preset = preset or ("ucf101-256" if gpu else "demo")
    batch = batch or (4 if gpu else 2)
    out = []
    for graph in ([False, True] if gpu else [False]):
        pipe = build_pipeline(preset, device, cuda_graph=graph)
        for name, sampler, steps, eta in CASES:
            row = {"case": name, "sampler": sampler, "steps": steps, "config": preset, "batch": batch,
                   "frames": pipe.clip_frames, "cuda_graph": graph,
                   "precision": "bf16" if pipe.amp else "fp32"}
            row.update(measure(pipe, sampler, steps, eta, batch, full=not quick))
            out.append(row)
        del pipe
        if gpu:
            torch.cuda.empty_cache()
    return out


def main() -> None:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="preset (default: ucf101-256 on GPU, demo on CPU)")
    p.add_argument("--batch", type=int, default=None, help="videos per call (default 4 on GPU, 2 on CPU)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("sample.py: no CUDA device visible; timing the tiny `demo` preset on the CPU instead.")
    table = rows(args.quick, args.config, args.batch)
    _bench.print_table(table)
    _bench.write_json(args.json, table, benchmark="sample")


if __name__ == "__main__":
    main()
