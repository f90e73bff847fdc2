"""Wall time of one training step (forward, backward, AdamW step) of the UNet and the autoencoder.

UNet: eps-prediction loss with a condition latent (the joint objective's conditional branch).
Autoencoder: the 4 * L1 reconstruction loss. Prints the median seconds per step over --steps steps
after --warmup steps, and the peak memory (CUDA allocator peak on a GPU, peak RSS on the CPU; the
RSS peak is per process, so time one model per run when comparing CPU memory).
Runs on the CPU or a GPU; the defaults are the small CPU reference configurations of issue 3.

    python benchmarks/train_step.py [--model unet|autoencoder|both] [--device cpu|cuda] [--json PATH]
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


def unet_step(args, device: torch.device) -> tuple[Callable[[], None], dict]:
    from pvdm_fast.diffusion.losses import diffusion_loss
    from pvdm_fast.diffusion.schedule import DiffusionConfig, NoiseSchedule
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig

    cfg = UNetConfig(frames=args.frames, height=args.latent_size, width=args.latent_size,
                     model_channels=args.model_channels, channel_mult=_ints(args.channel_mult),
                     num_res_blocks=args.num_res_blocks, attention_resolutions=_ints(args.attention_resolutions),
                     num_heads=args.num_heads, checkpoint=args.checkpoint)
    model = TriplaneUNet(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = NoiseSchedule.from_config(DiffusionConfig()).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(args.batch, cfg.in_channels, cfg.latent_length, device=device, generator=gen) * 2 - 1
    cond = torch.rand(x0.shape, device=device, generator=gen) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss, _ = diffusion_loss(model, schedule, x0, cond, generator=gen)
        loss.backward()
        opt.step()

    info = {"model": "unet", "config": f"mc{cfg.model_channels} mult{cfg.channel_mult} rb{cfg.num_res_blocks} "
            f"grid{cfg.grid}", "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    return step, info


def autoencoder_step(args, device: torch.device) -> tuple[Callable[[], None], dict] | None:
    try:
        from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    except ImportError:
        print("train_step.py: pvdm_fast.models.autoencoder is not available; skipping the autoencoder")
        return None
    cfg = AutoencoderConfig(resolution=args.resolution, frames=args.frames, channels=args.ae_channels,
                            patch_size=args.patch_size, checkpoint=args.checkpoint)
    model = Autoencoder(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    gen = torch.Generator(device=device).manual_seed(0)
    video = torch.rand(args.batch, 3, cfg.frames, cfg.resolution, cfg.resolution, device=device, generator=gen) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = 4 * (model(video).float() - video).abs().mean()
        loss.backward()
        opt.step()

    info = {"model": "autoencoder", "config": f"r{cfg.resolution} t{cfg.frames} c{cfg.channels} p{cfg.patch_size}",
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    return step, info


def rows(args) -> list[dict]:
    device = torch.device(args.device)
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
        out.append({**info, "device": _bench.device_name(), "batch": args.batch,
                    "dtype": "bf16-autocast" if args.bf16 else "fp32", "checkpoint": args.checkpoint,
                    "s_per_step": statistics.median(times), "min_s": min(times),
                    "peak_mem_MB": _peak_memory_mb(device)})
        del step
    return out


def main() -> None:
    p = _bench.parser("Time one training step of the UNet and/or the autoencoder.")
    p.add_argument("--model", choices=("unet", "autoencoder", "both"), default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32, as the official UNet)")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
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
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    torch.manual_seed(0)
    if args.device == "cpu":  # as training does: denormals make CPU steps 10-50x slower over time
        torch.set_flush_denormal(True)
    result = rows(args)
    _bench.print_table(result, ["model", "config", "device", "batch", "dtype", "checkpoint", "params_M",
                                "s_per_step", "min_s", "peak_mem_MB"])
    _bench.write_json(args.json, result, benchmark="train_step")


if __name__ == "__main__":
    main()
