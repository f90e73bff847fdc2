"""Wall time of one training step (forward, backward, AdamW step) of the UNet and the autoencoder.

UNet: eps-prediction loss with a condition latent (the joint objective's conditional branch).
Autoencoder: the 4 * L1 reconstruction loss. Prints the median seconds per step over --steps steps
after --warmup steps, and the peak memory (CUDA allocator peak on a GPU, peak RSS on the CPU; the
RSS peak is per process, so time one model per run when comparing CPU memory).
Runs on the CPU or a GPU; the defaults are the small CPU reference configurations of issue 3.

    python benchmarks/train_step.py [--model unet|autoencoder|both] [--device cpu|cuda] [--json PATH]
        [--data synthetic | --latents CACHE_DIR] [--largest-batch --budget-gb 24]

With --data the batches come from a real loader (decoding included in the timed step; the UNet then
encodes 2T-frame clips with the encoder in the loop); with --latents the UNet reads a latent cache.
`--largest-batch` (GPU) caps the allocator at --budget-gb and searches the largest batch that trains.
"""

from __future__ import annotations

import pathlib
import resource
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _bench  # noqa: E402

from pvdm_fast.train.loop import adamw  # noqa: E402  (fused where possible, as the trainers)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                     n: int) -> dict[str, list[float]]:
    """Time several step functions alternately (A, B, A, B, ...), so that drifting machine load falls
    on all of them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def compare_official_style(args, device: torch.device) -> list[dict]:
    """Our autoencoder step and the official-style execution of the same model (official_style.py),
    interleaved step by step in this process. Peak memory is the process's, not per implementation."""
    built = {impl: autoencoder_step(args, device, impl) for impl in ("pvdm_fast", "official-style")}
    if any(b is None for b in built.values()):
        return []
    times = time_interleaved({impl: b[0] for impl, b in built.items()}, device, args.warmup, args.steps)
    out = []
    for impl, (_, info) in built.items():
        median = statistics.median(times[impl])
        out.append({**info, "device": _bench.device_name(), "batch": args.batch,
                    "dtype": "bf16-autocast" if args.bf16 else "fp32", "checkpoint": args.checkpoint,
                    "s_per_step": median, "min_s": min(times[impl]), "clips_per_s": args.batch / median,
                    "peak_mem_MB": _peak_memory_mb(device), "speedup_vs_official_style":
                    statistics.median(times["official-style"]) / median if impl == "pvdm_fast" else 1.0})
    return out


def _batches(args, device: torch.device, frames: int, resolution: int, cond: bool):
    """An endless iterator of real batches from --data (decoding included in the timed step)."""
    from pvdm_fast.data.dataset import open_dataset
    from pvdm_fast.data.loader import make_loader

    dataset = open_dataset(args.data, resolution=resolution, frames=frames, cond=cond)
    loader = make_loader(dataset, args.batch, num_workers=args.workers, device=device, infinite=True,
                         drop_last=True)
    for batch in loader:
        yield batch["video"].to(device, non_blocking=True)


def _latent_batches(args, device: torch.device):
    from pvdm_fast.data.latents import LatentDataset
    from pvdm_fast.data.loader import make_loader

    loader = make_loader(LatentDataset(args.latents), args.batch, num_workers=args.workers, device=device,
                         infinite=True, drop_last=True)
    for batch in loader:
        yield batch["latent"].to(device).float(), batch["cond"].to(device).float()


def unet_step(args, device: torch.device) -> tuple[Callable[[], None], dict]:
    from pvdm_fast.diffusion.losses import diffusion_loss
    from pvdm_fast.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig

    cfg = UNetConfig(frames=args.frames, height=args.latent_size, width=args.latent_size,
                     model_channels=args.model_channels, channel_mult=_ints(args.channel_mult),
                     num_res_blocks=args.num_res_blocks, attention_resolutions=_ints(args.attention_resolutions),
                     num_heads=args.num_heads, checkpoint=args.checkpoint)
    model = TriplaneUNet(cfg).to(device).train()
    opt = adamw(model.parameters(), lr=1e-4)
    schedule = NoiseSchedule.from_config(DiffusionConfig()).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(args.batch, cfg.in_channels, cfg.latent_length, device=device, generator=gen) * 2 - 1
    cond = torch.rand(x0.shape, device=device, generator=gen) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    source = "random latents"
    batches = encoder = None
    if args.latents:
        batches, source = _latent_batches(args, device), f"latent cache {args.latents}"
    elif args.data:
        from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig

        hh = cfg.height * args.patch_size
        encoder = Autoencoder(AutoencoderConfig(resolution=hh, frames=cfg.frames, channels=args.ae_channels,
                                                patch_size=args.patch_size)).to(device).eval().requires_grad_(False)
        batches, source = _batches(args, device, cfg.frames, hh, cond=True), f"encoder in the loop on {args.data}"

    def step() -> None:
        nonlocal x0, cond
        if args.latents:
            x0, cond = next(batches)
        elif encoder is not None:
            clips = next(batches)  # (B, 3, 2T, H, W): previous clip, then the clip to denoise
            with torch.no_grad(), amp:
                z = encoder.encode(torch.cat(clips.chunk(2, dim=2))).float()
            cond, x0 = z.chunk(2)
        opt.zero_grad(set_to_none=True)
        with amp:
            loss, _ = diffusion_loss(model, schedule, x0, cond, generator=gen)
        loss.backward()
        opt.step()

    info = {"model": "unet", "config": f"mc{cfg.model_channels} mult{cfg.channel_mult} rb{cfg.num_res_blocks} "
            f"grid{cfg.grid}", "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "source": source}
    return step, info


def autoencoder_step(args, device: torch.device, impl: str = "pvdm_fast") -> tuple[Callable[[], None], dict] | None:
    try:
        from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    except ImportError:
        print("train_step.py: pvdm_fast.models.autoencoder is not available; skipping the autoencoder")
        return None
    cfg = AutoencoderConfig(resolution=args.resolution, frames=args.frames, channels=args.ae_channels,
                            patch_size=args.patch_size, checkpoint=args.checkpoint)
    torch.manual_seed(0)  # both implementations start from the same weights
    model = Autoencoder(cfg).to(device).train()
    if impl == "official-style":
        from official_style import official_style

        model = official_style(model)
    opt = adamw(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    gen = torch.Generator(device=device).manual_seed(0)
    video = torch.rand(args.batch, 3, cfg.frames, cfg.resolution, cfg.resolution, device=device, generator=gen) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    batches = _batches(args, device, cfg.frames, cfg.resolution, cond=False) if args.data else None

    def step() -> None:
        nonlocal video
        if batches is not None:
            video = next(batches)
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = 4 * (model(video).float() - video).abs().mean()
        loss.backward()
        opt.step()

    info = {"model": "autoencoder" if impl == "pvdm_fast" else f"autoencoder ({impl})",
            "config": f"r{cfg.resolution} t{cfg.frames} c{cfg.channels} p{cfg.patch_size}",
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "source": f"data {args.data}" if args.data else "random video"}
    return step, info


def largest_batch(build, args, device: torch.device) -> int:
    """The largest batch whose training step fits when the allocator is capped at --budget-gb
    (torch.cuda.set_per_process_memory_fraction), found by doubling then bisection."""
    import copy

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gb * 2**30 / total), device)

    def fits(batch: int) -> bool:
        trial = copy.copy(args)
        trial.batch = batch
        try:
            step, _ = build(trial, device)
            step()
            step()  # the optimizer state exists from the second step on
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            step = None
            torch.cuda.empty_cache()

    try:
        lo, hi = 0, 1
        while hi <= args.cap and fits(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, args.cap + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def rows(args) -> list[dict]:
    device = torch.device(args.device)
    if args.compare_official_style:
        return compare_official_style(args, device)
    builders = {"unet": [unet_step], "autoencoder": [autoencoder_step], "both": [autoencoder_step, unet_step]}
    out = []
    for build in builders[args.model]:
        built = build(args, device)
        if built is None:
            continue
        step, info = built
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = time_steps(step, device, args.warmup, args.steps)
        row = {**info, "device": _bench.device_name(), "batch": args.batch,
               "dtype": "bf16-autocast" if args.bf16 else "fp32", "checkpoint": args.checkpoint,
               "s_per_step": statistics.median(times), "min_s": min(times),
               "clips_per_s": args.batch / statistics.median(times), "peak_mem_MB": _peak_memory_mb(device)}
        del step
        if args.largest_batch and device.type == "cuda":
            row["largest_batch_in_%dGB" % args.budget_gb] = largest_batch(build, args, device)
        out.append(row)
    return out


def main(argv=None) -> None:
    p = _bench.parser("Time one training step of the UNet and/or the autoencoder.")
    p.add_argument("--model", choices=("unet", "autoencoder", "both"), default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32, as the official UNet)")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
    p.add_argument("--data", default=None, help="FORMAT:PATH (e.g. synthetic): real batches, loading timed in")
    p.add_argument("--latents", default=None, help="UNet from a latent cache folder (pvdm encode) instead")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes with --data/--latents")
    p.add_argument("--largest-batch", action="store_true", help="GPU: search the largest batch in --budget-gb")
    p.add_argument("--budget-gb", type=int, default=24)
    p.add_argument("--cap", type=int, default=256, help="largest batch tried")
    p.add_argument("--frames", type=int, default=16)
    # UNet (issue 3 reference: mc 64, mult 1,2,2,2, 1 res block, attention 4,2,1, 8 heads, latent 4x2048)
    p.add_argument("--latent-size", type=int, default=32, help="h = w of the latent grid")
    p.add_argument("--model-channels", type=int, default=64)
    p.add_argument("--channel-mult", default="1,2,2,2")
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--attention-resolutions", default="4,2,1")
    p.add_argument("--num-heads", type=int, default=8)
    # Autoencoder (issue 3 reference: resolution 64, 16 frames, channels 64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--ae-channels", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--compare-official-style", action="store_true",
                   help="autoencoder: also time the official-style execution of the same model "
                        "(official_style.py), step for step interleaved with ours")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 1
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    torch.manual_seed(0)
    if args.device == "cpu":  # as training does: denormals make CPU steps 10-50x slower over time
        torch.set_flush_denormal(True)
    result = rows(args)
    _bench.print_table(result, ["model", "config", "source", "device", "batch", "dtype", "checkpoint", "params_M",
                                "s_per_step", "min_s", "clips_per_s", "peak_mem_MB",
                                f"largest_batch_in_{args.budget_gb}GB", "speedup_vs_official_style"])
    _bench.write_json(args.json, result, benchmark="train_step")


if __name__ == "__main__":
    main()
