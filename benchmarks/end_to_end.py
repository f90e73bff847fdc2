"""End-to-end speed and memory at the official base configuration (16 x 256 x 256, C 384; UNet 256).

    python benchmarks/end_to_end.py [--json PATH] [--quick]          # on a GPU, bf16
    python benchmarks/end_to_end.py --preset tiny --device cpu       # smoke run of the script itself

For each backend setting (`reference`: our faithful model on plain PyTorch, SDPA and no custom
kernels; `auto`: fused kernels) it measures
- the autoencoder training step (4*L1 reconstruction, AdamW): clips/s, peak memory per clip, MFU
  against the measured bf16 matmul peak, and the largest batch that fits in --budget-gb (24);
- the diffusion training step from cached latents and with the encoder in the loop: samples/s, peak
  memory and the largest batch in the budget;
- sampling: seconds per clip for 400-step DDIM (eta 1, the official protocol) and 25-step
  DPM-Solver++, with and without CUDA graphs, and one long video (--long-frames, 128).
Weights are random: speed and memory do not depend on them.
"""
from __future__ import annotations

import pathlib
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _bench  # noqa: E402

GIB = 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_gib(device: torch.device, fn: Callable[[], object]) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / GIB


def matmul_peak_tflops(device: torch.device) -> float | None:
    """Measured dense bf16 matmul throughput: the denominator of MFU."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = _bench.do_bench_ms(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def largest_batch(make_step: Callable[[int], Callable[[], object]], device: torch.device, budget_gib: float,
                  cap: int) -> dict:
    """Peak memory at batch 1 and 2 gives a per-sample slope; the predicted largest batch is then run
    once to confirm it fits (stepping down while it does not)."""
    if device.type != "cuda":
        return {}
    peaks = {}
    for b in (1, 2):
        try:
            peaks[b] = _peak_gib(device, make_step(b))
        except torch.cuda.OutOfMemoryError:
            return {"largest_batch": 0 if b == 1 else 1}
    slope = max(peaks[2] - peaks[1], 1e-6)
    guess = max(1, min(cap, int((budget_gib - peaks[1]) / slope) + 1))
    while guess > 1:
        try:
            peak = _peak_gib(device, make_step(guess))
            if peak <= budget_gib:
                break
        except torch.cuda.OutOfMemoryError:
            pass
        guess -= 1
    return {"peak_gib_b1": peaks[1], "gib_per_sample": slope, "largest_batch": guess}


class Bench:
    def __init__(self, args):
        from pvdm_fast.configs import build, load_config

        self.args = args
        self.device = torch.device(args.device)
        cfg = load_config(args.preset)
        self.ae_cfg, self.unet_cfg, self.diff_cfg = (build(cfg, s) for s in ("autoencoder", "unet", "diffusion"))
        self.amp = self.device.type == "cuda"
        self.peak_tflops = matmul_peak_tflops(self.device)
        self.rows: list[dict] = []

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # ---- models
    def autoencoder(self):
        from pvdm_fast.models.autoencoder import Autoencoder

        torch.manual_seed(0)
        return Autoencoder(self.ae_cfg).to(self.device)

    def unet(self):
        from pvdm_fast.models.unet import TriplaneUNet

        torch.manual_seed(0)
        return TriplaneUNet(self.unet_cfg).to(self.device)

    def video(self, batch: int) -> torch.Tensor:
        hh, ww = self.ae_cfg.frame_size
        return torch.rand(batch, 3, self.ae_cfg.frames, hh, ww, device=self.device) * 2 - 1

    # ---- steps
    def ae_step(self, model, opt) -> Callable[[int], Callable[[], None]]:
        def make(batch: int) -> Callable[[], None]:
            video = self.video(batch)

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = 4 * (model(video).float() - video).abs().mean()
                loss.backward()
                opt.step()
            return step
        return make

    def diffusion_step(self, unet, opt, encoder=None) -> Callable[[int], Callable[[], None]]:
        from pvdm_fast.diffusion.losses import diffusion_loss
        from pvdm_fast.diffusion.schedule import NoiseSchedule

        schedule = NoiseSchedule.from_config(self.diff_cfg).to(self.device)
        channels, length = self.unet_cfg.in_channels, self.unet_cfg.latent_length

        def make(batch: int) -> Callable[[], None]:
            if encoder is None:
                x0 = torch.rand(batch, channels, length, device=self.device) * 2 - 1
                cond = torch.rand_like(x0) * 2 - 1
                videos = None
            else:
                videos = self.video(2 * batch)  # previous clip and current clip, as the joint objective

            def step() -> None:
                nonlocal x0, cond
                if videos is not None:
                    with torch.no_grad(), self.autocast():
                        z = encoder.encode(videos).float()
                    cond, x0 = z[:batch], z[batch:]
                opt.zero_grad(set_to_none=True)
                with self.autocast():
                    loss, _ = diffusion_loss(unet, schedule, x0, cond)
                loss.backward()
                opt.step()
            if videos is not None:
                x0 = cond = None
            return step
        return make

    def add(self, **row) -> None:
        self.rows.append(row)
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
        self.save(complete=False)  # a run stopped by gpu_check.sh's timeout keeps its rows

    def save(self, complete: bool) -> None:
        a = self.args
        _bench.write_json(a.json, self.rows, benchmark="end_to_end", preset=a.preset,
                          bf16_matmul_tflops=self.peak_tflops, budget_gib=a.budget_gb, complete=complete)

    # ---- measurements
    def training(self, backend: str) -> None:
        from pvdm_fast import ops
        from pvdm_fast.train.loop import adamw

        a = self.args
        with ops.use_backend(backend):
            ae = self.autoencoder().train()
            opt = adamw(ae.parameters(), lr=1e-4, betas=(0.5, 0.9))
            make = self.ae_step(ae, opt)
            step = make(a.batch)
            s = _median_s(step, self.device, a.warmup, a.reps)
            flops = _flops(step)
            peak = _peak_gib(self.device, step)
            row = dict(what="autoencoder train step", backend=backend, batch=a.batch, s_per_step=s,
                       clips_per_s=a.batch / s)
            if peak is not None:
                row["peak_gib_per_clip"] = peak / a.batch
            if self.peak_tflops:
                row.update(tflops=flops / s / 1e12, mfu=flops / s / 1e12 / self.peak_tflops)
            row.update(largest_batch(make, self.device, a.budget_gb, a.cap))
            self.add(**row)
            ae.eval().requires_grad_(False)
            del opt, make, step

            unet = self.unet().train()
            uopt = adamw(unet.parameters(), lr=1e-4)
            for label, encoder in (("diffusion train step (cached latents)", None),
                                   ("diffusion train step (encoder in the loop)", ae)):
                make = self.diffusion_step(unet, uopt, encoder)
                step = make(a.batch)
                s = _median_s(step, self.device, a.warmup, a.reps)
                peak = _peak_gib(self.device, step)
                row = dict(what=label, backend=backend, batch=a.batch, s_per_step=s, samples_per_s=a.batch / s)
                if peak is not None:
                    row["peak_gib"] = peak
                row.update(largest_batch(make, self.device, a.budget_gb, a.cap))
                self.add(**row)
            del ae, unet, uopt

    def sampling(self, backend: str) -> None:
        from pvdm_fast import ops
        from pvdm_fast.pipeline import Pipeline

        a = self.args
        cases = [("ddim", a.ddim_steps, 1.0), ("dpm++2m", a.dpm_steps, None)]
        graphs = (False, True) if self.device.type == "cuda" else (False,)
        with ops.use_backend(backend):
            ae, unet = self.autoencoder(), self.unet()
            for cuda_graph in graphs:
                pipe = Pipeline(ae, unet, self.diff_cfg, device=self.device, cuda_graph=cuda_graph)
                for sampler, steps, eta in cases:
                    def clip():
                        pipe(1, sampler=sampler, steps=steps, eta=eta, seed=0)
                    s = _median_s(clip, self.device, 1, a.sample_reps)
                    self.add(what="sample one clip", backend=backend, sampler=sampler, steps=steps,
                             cuda_graph=cuda_graph, s_per_clip=s)
                frames = a.long_frames
                start = time.perf_counter()
                pipe(1, frames, sampler="dpm++2m", steps=a.dpm_steps, seed=0)
                _sync(self.device)
                self.add(what=f"long video ({frames} frames)", backend=backend, sampler="dpm++2m",
                         steps=a.dpm_steps, cuda_graph=cuda_graph, s_total=time.perf_counter() - start)


def main(argv=None) -> int:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="ucf101-256")
    p.add_argument("--backends", default="reference,auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget-gb", type=float, default=24.0, help="memory budget for the largest batch (GiB)")
    p.add_argument("--cap", type=int, default=64, help="largest batch tried")
    p.add_argument("--ddim-steps", type=int, default=400)
    p.add_argument("--dpm-steps", type=int, default=25)
    p.add_argument("--sample-reps", type=int, default=1)
    p.add_argument("--long-frames", type=int, default=128)
    p.add_argument("--skip", default="", help="comma list of parts to skip: training, sampling")
    a = p.parse_args(argv)
    if a.quick:
        a.warmup, a.reps, a.ddim_steps = 1, 2, 100
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        print("end_to_end.py: no CUDA device visible (use --device cpu --preset tiny for a smoke run)")
        return 0
    bench = Bench(a)
    skip = {s for s in a.skip.split(",") if s}
    print(f"device: {_bench.device_name()}  preset: {a.preset}  bf16 matmul peak: "
          f"{bench.peak_tflops and f'{bench.peak_tflops:.0f} TFLOP/s'}")
    for backend in [b for b in a.backends.split(",") if b]:
        for part in ("training", "sampling"):
            if part in skip:
                continue
            try:
                getattr(bench, part)(backend)
            except Exception as exc:  # one failing part is a result, not the end of the run
                bench.add(what=part, backend=backend, error=f"{type(exc).__name__}: {exc}"[:300])
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
    _bench.print_table(bench.rows)
    bench.save(complete=True)
    return 1 if any("error" in r for r in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
